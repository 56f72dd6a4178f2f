"""cti.links.pbx.ChangeForwarder on a real AMI link: a failing change is logged and
skipped, a call whose handling is slow never holds up another call, and each
call's changes stay in order."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from cti.lab import LabPbx
from cti.links.pbx import ChangeForwarder
from pbx import changes as ch
from pbx.link import AmiLink, LinkSettings
from tests.peers.asterisk import hangup_channel

pytestmark = pytest.mark.integration

SLOW = "+79160000101"
FAST = "+79160000102"


async def test_bad_and_slow_changes_do_not_stop_other_calls(
    lab_pbx: LabPbx, sipp_caller: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[ch.Change] = []
    release = asyncio.Event()
    slow_call: list[str] = []

    async def handle(change: ch.Change) -> None:
        seen.append(change)
        if isinstance(change, ch.CallStarted) and change.caller_number == SLOW:
            slow_call.append(change.call_id)
            raise RuntimeError("boom: a broken change")
        if isinstance(change, ch.CallQueued) and change.call_id in slow_call:
            await release.wait()  # a slow database, say

    link = AmiLink("fwd", lab_pbx.ami_url, LinkSettings(backoff_min=0.2, backoff_max=1.0))
    forwarder = ChangeForwarder(link, handle)
    forwarder.start()
    await link.start()
    try:
        await link.wait_up(30)
        caplog.set_level(logging.ERROR, logger="cti.links.pbx")
        # Both callers stay until the PBX hangs them up: the test ends each call
        # once it is where the test wants it, never after a fixed time.
        sipp_caller(number="200", caller_number=SLOW, hangup_after=60)

        def queued(number: str) -> ch.CallQueued | None:
            return next((c for c in seen if isinstance(c, ch.CallQueued)
                         and c.caller_number == number), None)

        def started(number: str) -> ch.CallStarted:
            return next(c for c in seen if isinstance(c, ch.CallStarted)
                        and c.caller_number == number)

        def ended(call_id: str) -> bool:
            return any(isinstance(c, ch.CallEnded) and c.call_id == call_id for c in seen)

        deadline = time.monotonic() + 30
        while queued(SLOW) is None:
            assert time.monotonic() < deadline, "the slow call never queued"
            await asyncio.sleep(0.05)
        sipp_caller(number="200", caller_number=FAST, hangup_after=60)
        while (fast := queued(FAST)) is None:
            assert time.monotonic() < deadline + 30, "the second call was held up"
            await asyncio.sleep(0.05)
        await hangup_channel(lab_pbx, started(FAST).channel)
        while not ended(fast.call_id):
            assert time.monotonic() < deadline + 30, "the second call's end was held up"
            await asyncio.sleep(0.05)
        assert fast.call_id != slow_call[0]
        # The slow call ends at the PBX (the link's own state drops it), but its
        # later changes wait behind its blocked CallQueued.
        assert link.call(slow_call[0]) is not None
        await hangup_channel(lab_pbx, started(SLOW).channel)
        while link.call(slow_call[0]) is not None:
            assert time.monotonic() < deadline + 60, "the slow call never ended at the PBX"
            await asyncio.sleep(0.05)
        assert not ended(slow_call[0])
        release.set()
        while not ended(slow_call[0]):
            assert time.monotonic() < deadline + 60, "the slow call never ended"
            await asyncio.sleep(0.05)
        mine = [type(c).__name__ for c in seen if getattr(c, "call_id", None) == slow_call[0]]
        assert mine[:2] == ["CallStarted", "CallQueued"] and mine[-1] == "CallEnded", mine
        assert forwarder.failed == 1
        assert any(slow_call[0] in r.getMessage() and "CallStarted" in r.getMessage()
                   for r in caplog.records), caplog.text
    finally:
        release.set()
        await link.stop()
        await forwarder.stop()
