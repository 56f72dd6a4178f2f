"""Compare with a live Asterisk, and apply: write with a backup, reload, verify, roll back.

Theory of operation: ``apply`` renders the description, keeps a copy of every
file it is about to replace in ``etc/.pbxconf-backup-<UTC timestamp>/``, writes
the new files, then sends only the reloads the changed files need (RELOADS).
It verifies that every agent endpoint and every queue of the description is
reported by Asterisk. If a reload is refused or the verification fails it puts
the backed-up files back (removing files that did not exist) and sends the same
reloads again, so the PBX runs its previous configuration.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cti.pbxconf.ami import AmiClient, AmiError, AmiTarget
from cti.pbxconf.files import RELOAD_ORDER, RELOADS, changed_files, read_dir, render


class ApplyError(RuntimeError):
    """The configuration was not applied (and was rolled back if it had been written)."""


@dataclass(slots=True)
class ApplyResult:
    changed: list[str] = field(default_factory=list)
    reloads: list[str] = field(default_factory=list)
    backup: Path | None = None
    restart_needed: list[str] = field(default_factory=list)


def live_state(ami: AmiClient) -> tuple[set[str], dict[str, set[str]]]:
    """Endpoint names and queue -> member names as Asterisk reports them."""
    endpoints = set(re.findall(r"^\s*Endpoint:\s+([^\s/]+)", ami.command("pjsip show endpoints"),
                               re.MULTILINE))
    endpoints.discard("<Endpoint")
    queues: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in ami.command("queue show").splitlines():
        header = re.match(r"^(\S+) has \d+ calls", line)
        if header:
            current = set()
            queues[header.group(1)] = current
            continue
        member = re.match(r"^\s*(\S+) \(PJSIP/", line)
        if member and current is not None:
            current.add(member.group(1))
    return endpoints, queues


def compare_live(data: Mapping[str, Any], ami: AmiClient) -> list[str]:
    endpoints, queues = live_state(ami)
    problems: list[str] = []
    for agent in data["agents"]:
        if agent["name"] not in endpoints:
            problems.append(f"endpoint {agent['name']} is described but Asterisk has none")
    wanted_agents = {a["name"] for a in data["agents"]} | {"trunk", "carrier"}
    for name in sorted(endpoints - wanted_agents):
        problems.append(f"Asterisk has endpoint {name} that the description lacks")
    for queue in data["queues"]:
        live = queues.get(queue["name"])
        if live is None:
            problems.append(f"queue {queue['name']} is described but Asterisk has none")
            continue
        for member in sorted(set(queue["members"]) - live):
            problems.append(f"queue {queue['name']}: member {member} missing in Asterisk")
        for member in sorted(live - set(queue["members"])):
            problems.append(f"queue {queue['name']}: Asterisk has extra member {member}")
    for name in sorted(set(queues) - {q["name"] for q in data["queues"]}):
        problems.append(f"Asterisk has queue {name} that the description lacks")
    return problems


def _verify(data: Mapping[str, Any], target: AmiTarget, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    problems = ["not verified"]
    while time.monotonic() < deadline:
        with AmiClient(target) as ami:
            problems = [p for p in compare_live(data, ami) if "described but" in p
                        or "missing in Asterisk" in p]
        if not problems:
            return []
        time.sleep(0.3)
    return problems


def _reload(target: AmiTarget, commands: list[str]) -> None:
    with AmiClient(target) as ami:
        for command in commands:
            output = ami.command(command)
            if re.search(r"fail|error|not found|No such", output, re.IGNORECASE):
                raise AmiError(f"{command!r}: {output.strip()}")


def _write_like(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its mode and (when allowed) its owner.

    Asterisk usually runs as its own user: a file rewritten by root with a
    new owner would become unreadable to it.
    """
    tmp = path.with_name(f".{path.name}.pbxconf-new")
    tmp.write_text(text, encoding="utf-8")
    try:
        old = path.stat()
    except FileNotFoundError:
        tmp.chmod(0o640)
    else:
        tmp.chmod(old.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, old.st_uid, old.st_gid)
    tmp.replace(path)


def apply(data: Mapping[str, Any], etc: Path, target: AmiTarget,
          verify_timeout: float = 10.0) -> ApplyResult:
    wanted = render(data)
    current = read_dir(etc, sorted(wanted))
    result = ApplyResult(changed=changed_files(current, wanted))
    if not result.changed:
        return result
    with AmiClient(target) as ami:  # refuse before writing if reloads cannot be sent
        ami.command("core show version")
    needed = {RELOADS.get(name) for name in result.changed}
    result.reloads = [c for c in RELOAD_ORDER if c in needed]
    result.restart_needed = [n for n in result.changed if RELOADS.get(n) is None]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = etc / f".pbxconf-backup-{stamp}"
    suffix = 1
    while backup.exists():
        suffix += 1
        backup = etc / f".pbxconf-backup-{stamp}-{suffix}"
    backup.mkdir(mode=0o700)
    result.backup = backup
    for name in result.changed:
        if current[name] is not None:
            shutil.copy2(etc / name, backup / name)
    for name in result.changed:
        _write_like(etc / name, wanted[name])
    try:
        _reload(target, result.reloads)
        problems = _verify(data, target, verify_timeout)
        if problems:
            raise ApplyError("verification failed: " + "; ".join(problems))
    except (AmiError, ApplyError) as exc:
        for name in result.changed:
            if current[name] is None:
                (etc / name).unlink(missing_ok=True)
            else:
                shutil.copy2(backup / name, etc / name)
        try:
            _reload(target, result.reloads)
        except AmiError as again:
            raise ApplyError(f"{exc}; rolled the files back but the reload failed too: "
                             f"{again}") from exc
        raise ApplyError(f"{exc}; rolled back to {backup} and reloaded") from exc
    return result
