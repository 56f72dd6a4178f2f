"""The lab PBX boots from asterisk-conf/, answers AMI and takes agent registrations."""

from __future__ import annotations

import pytest

from cti.lab import LabPbx

pytestmark = pytest.mark.integration


def test_lab_pbx_boots_with_the_rendered_configuration(lab_pbx: LabPbx) -> None:
    assert lab_pbx.pid is not None
    endpoints = lab_pbx.cli("pjsip show endpoints")
    for name in ("trunk", "carrier", "agent1", "agent2", "agent3", "agent4"):
        assert f"Endpoint:  {name}" in endpoints
    queues = lab_pbx.cli("queue show")
    assert "support has 0 calls" in queues and "'linear' strategy" in queues
    assert "sales has 0 calls" in queues
    user = lab_pbx.cli(f"manager show user {lab_pbx.ami_user}")
    assert "read perm: system,call,agent,user,dtmf" in user
    dialplan = lab_pbx.cli("dialplan show cti-inbound")
    assert f"agi://{lab_pbx.agi_host}:{lab_pbx.agi_port}/inbound" in dialplan
