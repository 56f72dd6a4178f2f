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
import time
import warnings
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


def _concise_channels(pbx: LabPbx) -> list[list[str]]:
    """``core show channels concise`` rows: name, context, exten, priority, state,
    application, data, caller ID number, account, peer account, AMA flags,
    duration, bridge id, uniqueid."""
    rows = [line.split("!") for line in pbx.cli("core show channels concise").splitlines()]
    return [row for row in rows if len(row) >= 13]


def _channels_of_caller(rows: list[list[str]], caller_number: str) -> set[str]:
    """The channels of the calls from ``caller_number``, and those bridged to them."""
    bridges = {row[12] for row in rows if row[7] == caller_number and row[12]}
    return {row[0] for row in rows if row[7] == caller_number or row[12] in bridges}


async def hangup_caller(pbx: LabPbx, caller_number: str, within: float = 30.0) -> set[str]:
    """End, from the PBX, every call from ``caller_number``; return the channels hung up.

    Each channel is hung up by the PBX (its SIP peer gets a BYE, so a SIPp
    caller waiting for it ends its call normally); then this waits until none
    of them, and no new call from that number, is left. A call ended by
    stopping SIPp instead would stay on the PBX.
    """
    channels = _channels_of_caller(await asyncio.to_thread(_concise_channels, pbx),
                                   caller_number)
    for channel in sorted(channels):
        # Not hangup_channel(): a bridged peer may already be gone with its partner.
        await asyncio.to_thread(pbx.cli, f"channel request hangup {channel}")
    deadline = time.monotonic() + within
    while True:
        rows = await asyncio.to_thread(_concise_channels, pbx)
        left = ({row[0] for row in rows} & channels) | _channels_of_caller(rows, caller_number)
        if not left:
            return channels
        if time.monotonic() > deadline:
            raise AssertionError(f"calls from {caller_number} still on the PBX after "
                                 f"{within:g} s: {sorted(left)}")
        await asyncio.sleep(0.1)


def keep_logs(pbx: LabPbx, label: str) -> None:
    target = ARTIFACTS / ("asterisk-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label))
    target.mkdir(parents=True, exist_ok=True)
    for path in (pbx.messages_log, pbx.console_log):
        if path.exists():
            shutil.copyfile(path, target / path.name)


SHARED_LAB = pytest.StashKey[LabPbx]()


def _channel_count(pbx: LabPbx) -> int:
    match = re.search(r"(\d+) active channels?", pbx.cli("core show channels count"))
    return int(match.group(1)) if match else 0


@pytest.fixture(autouse=True)
def no_call_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, no call stays on the shared lab PBX.

    A test that stops a SIPp caller by signal leaves its call in Asterisk (no
    BYE is sent, and the lab has no RTP timeout); the next test would find an
    extra caller waiting in its queue. Whatever is left is hung up here, with a
    warning naming the test that left it.
    """
    yield
    if "lab_pbx" not in request.fixturenames:
        return
    pbx = request.session.stash.get(SHARED_LAB, None)
    if pbx is None or not pbx.is_running():
        return
    try:
        left = _channel_count(pbx)
        if left == 0:
            return
        # Said, not failed: the leak is the test's own bug, and the next tests
        # are protected either way; -ra lists the warning with the test's name.
        warnings.warn(f"{request.node.nodeid} left {left} channel(s) on the shared lab PBX; "
                      "hung up (end calls from the PBX, not by stopping SIPp)", stacklevel=1)
        pbx.cli("channel request hangup all")
        deadline = time.monotonic() + 10.0
        while _channel_count(pbx) and time.monotonic() < deadline:
            time.sleep(0.1)
    except LabPbxError as exc:
        warnings.warn(f"could not clear the shared lab PBX's calls: {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def lab_pbx(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabPbx]:
    """The shared lab Asterisk: agents agent1..agent4, queues support and sales."""
    pbx = start_lab_pbx(LabPbx(tmp_path_factory.mktemp("lab-pbx")))
    request.session.stash[SHARED_LAB] = pbx
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
