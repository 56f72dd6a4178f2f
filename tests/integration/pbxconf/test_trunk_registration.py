"""A registering trunk and per-queue settings, applied to a running lab Asterisk.

The carrier is a SIPp registrar (tests/sipp/registrar.xml) that challenges the
REGISTER and verifies the digest with the credentials it was started with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cti.lab import AMI_WRITE, LabPbx
from cti.pbxconf.ami import AmiTarget
from cti.pbxconf.apply import apply
from cti.pbxconf.files import import_dir
from tests.peers.asterisk import LabPbxFactory
from tests.peers.ports import free_port
from tests.peers.sipp import SCENARIO_DIR, SippProcess

pytestmark = pytest.mark.integration

SECRET = "Tr7_uNk9-Reg4Xq2"


def registrar(workdir: Path, port: int, username: str, password: str) -> SippProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / f"registrar-{port}.xml"
    scenario.write_text((SCENARIO_DIR / "registrar.xml").read_text(encoding="utf-8")
                        .replace("@@USERNAME@@", username).replace("@@PASSWORD@@", password),
                        encoding="utf-8")
    proc = SippProcess(f"registrar-{port}", workdir,
                       ["-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port)], 40.0)
    proc.start()
    return proc


def registration_state(pbx: LabPbx, within: float, want: str) -> str:
    deadline = time.monotonic() + within
    out = ""
    while time.monotonic() < deadline:
        out = pbx.cli("pjsip show registrations")
        if want in out:
            return out
        time.sleep(0.3)
    return out


def with_registration(data: dict[str, Any], port: int) -> dict[str, Any]:
    data["trunks"]["outbound"] = {
        "host": "127.0.0.1", "port": port,
        "registration": {"username": "cc-trunk", "secret": SECRET,
                         "contact_user": "74951234567", "expiration": 600,
                         "retry_interval": 5}}
    return data


def test_registering_trunk_registers_with_digest_auth(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path
) -> None:
    pbx = lab_pbx_factory(ami_write=AMI_WRITE + ",command")
    assert "carrier-reg" not in pbx.cli("pjsip show registrations")
    port = free_port(host="127.0.0.1")
    carrier = registrar(tmp_path / "sipp", port, "cc-trunk", SECRET)
    apply(with_registration(import_dir(pbx.etc_dir), port), pbx.etc_dir,
          AmiTarget.from_url(pbx.ami_url))
    out = registration_state(pbx, 20.0, "Registered")
    assert "carrier-reg/sip:127.0.0.1" in out and "Registered" in out, out
    result = carrier.wait(30)
    assert result.ok, result
    log = (tmp_path / "sipp" / f"registrar-{port}_messages.log").read_text(errors="replace")
    assert 'Authorization: Digest username="cc-trunk"' in log
    assert "Contact: <sip:74951234567@" in log
    # The imported description carries the registration back.
    assert import_dir(pbx.etc_dir)["trunks"]["outbound"]["registration"]["username"] == \
        "cc-trunk"


def test_a_carrier_refusing_the_credentials_shows_rejected(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path
) -> None:
    pbx = lab_pbx_factory(ami_write=AMI_WRITE + ",command")
    port = free_port(host="127.0.0.1")
    carrier = registrar(tmp_path / "sipp", port, "cc-trunk", "another-Secret-42x")
    apply(with_registration(import_dir(pbx.etc_dir), port), pbx.etc_dir,
          AmiTarget.from_url(pbx.ami_url))
    out = registration_state(pbx, 20.0, "Rejected")
    assert "Rejected" in out and "Registered" not in out, out
    carrier.wait(30)
    assert pbx.is_running()


def test_per_queue_strategy_and_service_level_reach_asterisk(
    lab_pbx_factory: LabPbxFactory,
) -> None:
    pbx = lab_pbx_factory(ami_write=AMI_WRITE + ",command")
    data = import_dir(pbx.etc_dir)
    data["queue_settings"]["servicelevel"] = 30
    data["queues"][1].update({"strategy": "ringall", "servicelevel": 45, "maxlen": 7})
    apply(data, pbx.etc_dir, AmiTarget.from_url(pbx.ami_url))
    support, sales = pbx.cli("queue show support"), pbx.cli("queue show sales")
    assert "'linear' strategy" in support and "within 30s" in support, support
    assert "'ringall' strategy" in sales and "within 45s" in sales, sales
    assert "(max 7)" in sales, sales
