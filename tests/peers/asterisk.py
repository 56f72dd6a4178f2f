"""The lab Asterisk (asterisk-conf/ rendered by cti.lab.LabPbx) as pytest fixtures.

``lab_pbx`` is one instance per session on free loopback ports. Tests that
kill or restart Asterisk use ``lab_pbx_factory`` to get their own. A PBX that
cannot start fails the test with the reason (missing binary, boot log tail).
When a test failed, the Asterisk logs are copied to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cti.lab import LabPbx, LabPbxError

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
failed_key = pytest.StashKey[bool]()

LabPbxFactory = Callable[..., LabPbx]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[failed_key] = True
    return report


def start_lab_pbx(pbx: LabPbx) -> LabPbx:
    """Start ``pbx`` or fail the test naming what is missing."""
    try:
        pbx.start()
    except LabPbxError as exc:
        pytest.fail(f"lab Asterisk could not start: {exc}", pytrace=False)
    return pbx


async def hangup_channel(pbx: LabPbx, channel: str) -> str:
    """Hang up ``channel`` from the PBX side: its SIP peer gets the PBX's BYE.

    For tests that end a call once the PBX did what they wait for, instead of
    a caller that hangs up after a fixed time (too early on a loaded machine,
    needlessly late on an idle one). Returns the CLI's answer.
    """
    answer = await asyncio.to_thread(pbx.cli, f"channel request hangup {channel}")
    if "not a known channel" in answer:
        raise AssertionError(f"cannot hang up {channel}: {answer.strip()}")
    return answer


def keep_logs(pbx: LabPbx, label: str) -> None:
    target = ARTIFACTS / ("asterisk-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label))
    target.mkdir(parents=True, exist_ok=True)
    for path in (pbx.messages_log, pbx.console_log):
        if path.exists():
            shutil.copyfile(path, target / path.name)


@pytest.fixture(scope="session")
def lab_pbx(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabPbx]:
    """The shared lab Asterisk: agents agent1..agent4, queues support and sales."""
    pbx = start_lab_pbx(LabPbx(tmp_path_factory.mktemp("lab-pbx")))
    try:
        yield pbx
    finally:
        pbx.stop()
        if request.session.testsfailed:
            keep_logs(pbx, "session")


@pytest.fixture
def lab_pbx_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabPbxFactory]:
    """Start private lab PBXes (LabPbx keyword arguments); all stopped after the test."""
    started: list[LabPbx] = []

    def factory(**kwargs: Any) -> LabPbx:
        pbx = LabPbx(tmp_path_factory.mktemp("lab-pbx-own"), **kwargs)
        started.append(pbx)
        return start_lab_pbx(pbx)

    try:
        yield factory
    finally:
        errors: list[str] = []
        for index, pbx in enumerate(started):
            try:
                pbx.stop()
            except LabPbxError as exc:
                errors.append(str(exc))
            if request.node.stash.get(failed_key, False):
                keep_logs(pbx, f"{request.node.name}-{index}")
        if errors:
            pytest.fail("; ".join(errors), pytrace=False)
