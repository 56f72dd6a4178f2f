"""kill -9 Asterisk mid-call, start it again: reconnect, resync, the lost call closed once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pbx import changes as ch
from pbx.link import AmiLink
from pbx.state import OUTAGE_REASON
from tests.integration.pbx.conftest import FAST, Recorder, wait_until
from tests.peers.sipp import caller_call

pytestmark = pytest.mark.integration


async def test_kill9_mid_call_then_restart(lab_pbx_factory: Any, tmp_path: Path) -> None:
    pbx = lab_pbx_factory()
    link = AmiLink("own", pbx.ami_url, FAST)
    rec = Recorder(link)
    callers = []
    try:
        await link.start()
        await link.wait_up(30)
        callers.append(caller_call(pbx, tmp_path / "a", caller_number="111", hangup_after=120))
        queued = await rec.wait_for(ch.CallQueued, lambda c: c.queue == "support")
        lost = queued.call_id
        assert link.health().up

        pbx.kill9()
        down = await rec.wait_for(ch.PbxLinkChanged, lambda c: not c.up, within=20)
        assert down.pbx == "own"
        assert not link.health().up
        # The outage is not the end of the call as far as the state knows: no CallEnded yet.
        assert rec.of(ch.CallEnded) == []

        await pbx.astart()
        up = await rec.wait_for(ch.PbxLinkChanged, lambda c: c.up and c.restarted, within=60)
        assert up.restarted
        ended = rec.of(ch.CallEnded, lambda c: c.call_id == lost)
        assert len(ended) == 1 and ended[0].reason == OUTAGE_REASON
        assert ended[0].queue == "support" and ended[0].durations.wait > 0
        assert link.call(lost) is None
        assert link.health().up and link.health().connects == 2

        callers.append(caller_call(pbx, tmp_path / "b", caller_number="222", hangup_after=120))
        fresh = await rec.wait_for(ch.CallQueued, lambda c: c.call_id != lost)
        assert fresh.queue == "support" and fresh.position == 1
        snap = link.call(fresh.call_id)
        assert snap is not None and snap.state is ch.CallState.QUEUED
        await wait_until(lambda: len(rec.of(ch.PbxLinkChanged)) >= 3, 5, "link changes")
        assert len(rec.of(ch.CallEnded, lambda c: c.call_id == lost)) == 1
    finally:
        for proc in callers:
            proc.stop()
        await link.stop()
        await rec.close()
