"""The AMI link against real Asterisk: refused login, PBX down at start, half-open, two PBXs."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cti.lab import LabPbx
from pbx import changes as ch
from pbx.actions import PbxUnavailable
from pbx.link import AmiLink
from tests.integration.pbx.conftest import FAST, Recorder, wait_until
from tests.peers.sipp import caller_call

pytestmark = pytest.mark.integration


async def test_refused_login_is_clear_and_the_secret_never_logged(
    lab_pbx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + lab_pbx.ami_secret[::-1]
    bad = AmiLink("lab", lab_pbx.ami_url.replace(lab_pbx.ami_secret, wrong), FAST)
    good = AmiLink("lab", lab_pbx.ami_url, FAST)
    try:
        await bad.start()
        await good.start()
        await wait_until(lambda: "refused" in bad.health().detail, 20, "refused login")
        assert "Authentication failed" in bad.health().detail and not bad.health().up
        with pytest.raises(PbxUnavailable):
            await bad.hangup("PJSIP/agent1-00000001")
        await good.wait_up(20)
        await good.getvar("EPOCH")
    finally:
        await bad.stop()
        await good.stop()
    for secret in (wrong, lab_pbx.ami_secret):
        assert secret not in caplog.text
    assert "refused" in caplog.text


async def test_pbx_not_running_at_start_then_started(tmp_path: Path) -> None:
    pbx = LabPbx(tmp_path / "pbx")
    link = AmiLink("late", pbx.ami_url, FAST)
    try:
        await link.start()
        await wait_until(lambda: "refused" in link.health().detail.lower()
                         or "connect call failed" in link.health().detail.lower(), 10, "down")
        assert not link.health().up
        await pbx.astart()
        await link.wait_up(30)
        assert link.health().up and link.health().asterisk_started
        assert {q.name for q in link.queues()} == {"support", "sales"}
    finally:
        await link.stop()
        await pbx.astop()


async def test_frozen_asterisk_half_open_link_detected_by_ping(lab_pbx_factory: Any) -> None:
    pbx = lab_pbx_factory()
    link = AmiLink("frozen", pbx.ami_url, FAST)
    rec = Recorder(link)
    assert pbx.pid is not None
    try:
        await link.start()
        await link.wait_up(30)
        os.kill(pbx.pid, signal.SIGSTOP)
        down = await rec.wait_for(ch.PbxLinkChanged, lambda c: not c.up, within=20)
        assert "no Pong" in down.detail
        os.kill(pbx.pid, signal.SIGCONT)
        up = await rec.wait_for(ch.PbxLinkChanged, lambda c: c.up and c.at > down.at, within=30)
        assert not up.restarted
    finally:
        os.kill(pbx.pid, signal.SIGCONT)
        await link.stop()
        await rec.close()


async def test_two_pbxs_at_once_ids_namespaced(lab_pbx_factory: Any, tmp_path: Path) -> None:
    pbxs = {"east": lab_pbx_factory(), "west": lab_pbx_factory()}
    links = {name: AmiLink(name, pbx.ami_url, FAST) for name, pbx in pbxs.items()}
    recs = {name: Recorder(link) for name, link in links.items()}
    callers = []
    try:
        for link in links.values():
            await link.start()
        for link in links.values():
            await link.wait_up(30)
        for name, pbx in pbxs.items():
            callers.append(caller_call(pbx, tmp_path / name, caller_number="555",
                                       hangup_after=60))
        for name, rec in recs.items():
            queued = await rec.wait_for(ch.CallQueued)
            assert queued.pbx == name and queued.call_id.startswith(f"{name}:")
            assert [c.call_id for c in links[name].calls()] == [queued.call_id]
    finally:
        for proc in callers:
            proc.stop()
        for name in links:
            await links[name].stop()
            await recs[name].close()
