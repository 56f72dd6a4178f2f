"""The dependency rule of DESIGN.md: cti -> {pbx, ivr, sms_gateway}; leaves import no sibling."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEAVES = ("pbx", "ivr", "sms_gateway")
FIRST_PARTY = ("cti", *LEAVES)


def _modules(package: str) -> list[str]:
    pkg_dir = ROOT / package
    names = [package]
    for info in pkgutil.walk_packages([str(pkg_dir)], prefix=f"{package}."):
        if not info.name.endswith(".__main__"):
            names.append(info.name)
    return names


PROBE = r"""
import importlib, json, sys
name = sys.argv[1]
before = set(sys.modules)
importlib.import_module(name)
print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))
"""


def _probe_all(modules: list[str]) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
    """Import each module in a fresh interpreter, a few at a time (one per core)."""

    def probe(module: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return module, subprocess.run(
            [sys.executable, "-c", PROBE, module],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(probe, modules))


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_packages_import_no_sibling(leaf: str) -> None:
    forbidden = set(FIRST_PARTY) - {leaf}
    for module, out in _probe_all(_modules(leaf)):
        assert out.returncode == 0, f"importing {module} failed:\n{out.stderr}"
        loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
        bad = loaded & forbidden
        assert not bad, f"{module} imports {sorted(bad)}; leaves may not import siblings or cti"


@pytest.mark.timeout(600)
def test_every_cti_module_imports() -> None:
    for module, out in _probe_all(_modules("cti")):
        assert out.returncode == 0, f"importing {module} failed:\n{out.stderr}"
