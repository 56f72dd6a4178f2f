"""`cti pbx` against a real lab Asterisk: apply adds an agent without a restart,
a broken description is refused, a reload Asterisk rejects is rolled back."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from cti.lab import AMI_WRITE, LabPbx
from cti.pbxconf import cli
from cti.pbxconf.ami import AmiClient, AmiTarget
from cti.pbxconf.apply import ApplyError, apply, live_state
from cti.pbxconf.description import dump_description
from cti.pbxconf.files import import_dir
from tests.peers.asterisk import LabPbxFactory
from tests.peers.sipp import agent_answering, caller_call, register_agent

pytestmark = pytest.mark.integration

AGENT5 = {"name": "agent5", "secret": "Zx8-kLm3Qp7rTv2W", "extension": "1005",
          "display_name": "Agent 5"}


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return cli.run(parser.parse_args(list(argv)))


def registers(pbx: LabPbx, workdir: Path, agent: str, password: str) -> bool:
    proc = register_agent(pbx, workdir, agent, password=password, hold=0.3, timeout=20,
                          name=f"register-{agent}-{len(list(workdir.glob('*.xml')))}")
    return proc.wait(40).ok


def own_pbx(factory: LabPbxFactory) -> LabPbx:
    # apply reloads modules over AMI (Command action): this user needs 'command'.
    return factory(ami_write=AMI_WRITE + ",command")


def with_agent5(data: dict[str, Any]) -> dict[str, Any]:
    data["agents"].append(dict(AGENT5))
    data["queues"][0]["members"].append("agent5")
    return data


def test_apply_adds_an_agent_that_registers_without_restart(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx = own_pbx(lab_pbx_factory)
    pid = pbx.pid
    desc = tmp_path / "cc.yaml"
    desc.write_text(dump_description(with_agent5(import_dir(pbx.etc_dir))), encoding="utf-8")
    assert not registers(pbx, tmp_path / "sipp", "agent5", str(AGENT5["secret"]))

    assert run_cli("diff", str(desc), "--etc", str(pbx.etc_dir)) == 1
    assert "+[agent5]" in capsys.readouterr().out
    assert run_cli("check", str(desc), "--ami-url", pbx.ami_url) == 3
    assert "endpoint agent5 is described but Asterisk has none" in capsys.readouterr().out

    assert run_cli("apply", str(desc), "--etc", str(pbx.etc_dir), "--ami-url", pbx.ami_url) == 0
    out = capsys.readouterr().out
    assert "changed: extensions.conf, pjsip.conf, queues.conf" in out
    assert "module reload res_pjsip.so" in out and "app_queue.so" in out

    assert registers(pbx, tmp_path / "sipp", "agent5", str(AGENT5["secret"]))
    assert pbx.pid == pid and pbx.is_running()
    assert "agent5 (PJSIP/agent5)" in pbx.cli("queue show support")
    assert "'1005' =>" in pbx.cli("dialplan show 1005@from-agents")
    assert run_cli("check", str(desc), "--ami-url", pbx.ami_url) == 0
    assert run_cli("apply", str(desc), "--etc", str(pbx.etc_dir), "--ami-url", pbx.ami_url) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_broken_description_is_refused_with_its_line(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx = own_pbx(lab_pbx_factory)
    data = import_dir(pbx.etc_dir)
    data["queues"][1]["members"].append("agent9")
    desc = tmp_path / "cc.yaml"
    text = dump_description(data)
    desc.write_text(text, encoding="utf-8")
    before = {p.name: p.read_text() for p in pbx.etc_dir.glob("*.conf")}
    assert run_cli("apply", str(desc), "--etc", str(pbx.etc_dir), "--ami-url", pbx.ami_url) == 2
    line = text.splitlines().index("  - agent9") + 1
    assert (f"{desc}:{line}: error: queue 'sales': member 'agent9' is not a defined agent"
            in capsys.readouterr().err)
    assert {p.name: p.read_text() for p in pbx.etc_dir.glob("*.conf")} == before


def test_reload_rejected_by_asterisk_rolls_back_and_pbx_keeps_working(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path
) -> None:
    pbx = own_pbx(lab_pbx_factory)
    pid = pbx.pid
    target = AmiTarget.from_url(pbx.ami_url)
    good = with_agent5(import_dir(pbx.etc_dir))
    apply(good, pbx.etc_dir, target)
    applied = {p.name: p.read_text() for p in pbx.etc_dir.glob("*.conf")}
    # The schema refuses ';' in names; the library is called directly to hand
    # Asterisk a pjsip.conf it cannot parse ("[agent;6" has no closing ']').
    bad = with_agent5(import_dir(pbx.etc_dir))
    bad["agents"] = [a for a in bad["agents"] if a["name"] != "agent5"]
    bad["queues"][0]["members"].remove("agent5")
    bad["agents"].append({"name": "agent;6", "secret": "Qw5-nBv8Lk2Hj7Fd", "extension": "1006",
                          "display_name": "Agent 6"})
    with pytest.raises(ApplyError, match=r"endpoint agent;6 is described but Asterisk has none"
                       r".*rolled back to .*pbxconf-backup-.* and reloaded"):
        apply(bad, pbx.etc_dir, target, verify_timeout=5.0)
    assert {p.name: p.read_text() for p in pbx.etc_dir.glob("*.conf")} == applied
    with AmiClient(target) as ami:
        endpoints, queues = live_state(ami)
    assert {"agent1", "agent5"} <= endpoints and "agent5" in queues["support"]
    assert registers(pbx, tmp_path / "sipp", "agent1", pbx.agents["agent1"])
    assert registers(pbx, tmp_path / "sipp", "agent5", str(AGENT5["secret"]))
    assert pbx.pid == pid and pbx.is_running()


def test_applied_queue_takes_a_call_answered_by_the_applied_agent(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path
) -> None:
    pbx = own_pbx(lab_pbx_factory)
    pid = pbx.pid
    data = import_dir(pbx.etc_dir)
    data["agents"].append(dict(AGENT5))
    data["queues"].append({"name": "billing", "number": "300", "members": ["agent5"]})
    apply(data, pbx.etc_dir, AmiTarget.from_url(pbx.ami_url))
    pbx.agents["agent5"] = str(AGENT5["secret"])  # what the SIPp helpers register with
    agent = agent_answering(pbx, tmp_path / "sipp", "agent5", ring=0.5, timeout=60)
    # The caller is answered before the IVR and Queue() run; it must stay long
    # enough for the queue to ring agent5 on a loaded machine (CI once took >2 s).
    caller = caller_call(pbx, tmp_path / "sipp", number="300", hangup_after=8.0, timeout=60)
    assert caller.wait(60).ok
    assert agent.wait(60).ok
    assert "billing has 0 calls" in pbx.cli("queue show billing")
    assert pbx.pid == pid


def test_apply_without_the_command_class_writes_nothing(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx = lab_pbx_factory()  # the CTI's least-privilege AMI user: no 'command'
    desc = tmp_path / "cc.yaml"
    desc.write_text(dump_description(with_agent5(import_dir(pbx.etc_dir))), encoding="utf-8")
    before = {p.name: p.read_text() for p in pbx.etc_dir.glob("*.conf")}
    assert run_cli("apply", str(desc), "--etc", str(pbx.etc_dir), "--ami-url", pbx.ami_url) == 1
    err = capsys.readouterr().err
    assert "AMI refused 'core show version'" in err and pbx.ami_secret not in err
    assert {p.name: p.read_text() for p in pbx.etc_dir.glob("*.conf")} == before
    assert not list(pbx.etc_dir.glob(".pbxconf-backup-*"))
