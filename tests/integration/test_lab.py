"""The lab PBX boots from asterisk-conf/, answers AMI and takes agent registrations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cti.lab import STATE_FILE, LabPbx, LabPbxError, PortTaken, render_templates
from tests.peers.asterisk import LabPbxFactory, hangup_channel
from tests.peers.sipp import (
    Dtmf,
    Pause,
    SippFactory,
    SippProcess,
    caller_call,
    register_agent,
    wait_until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def ami_login_events(pbx: LabPbx, secret: str) -> list[dict[str, str]]:
    """Log in over a raw socket; the messages up to FullyBooted or an error."""
    reader, writer = await asyncio.open_connection(pbx.host, pbx.ami_port)
    try:
        banner = await asyncio.wait_for(reader.readline(), 10)
        assert banner.startswith(b"Asterisk Call Manager/"), banner
        writer.write(f"Action: Login\r\nUsername: {pbx.ami_user}\r\nSecret: {secret}\r\n\r\n"
                     .encode())
        messages: list[dict[str, str]] = []
        while True:
            block = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            fields = dict(
                line.split(": ", 1) for line in block.decode().strip().split("\r\n") if ": " in line
            )
            messages.append(fields)
            if fields.get("Event") == "FullyBooted" or fields.get("Response") == "Error":
                return messages
    finally:
        writer.close()
        await writer.wait_closed()


def test_lab_pbx_boots_with_the_rendered_configuration(lab_pbx: LabPbx) -> None:
    assert lab_pbx.pid is not None and lab_pbx.is_running()
    endpoints = lab_pbx.cli("pjsip show endpoints")
    for name in ("trunk", "carrier", "agent1", "agent2", "agent3", "agent4"):
        assert f"Endpoint:  {name}" in endpoints
    assert f"127.0.0.1:{lab_pbx.sip_port}" in endpoints
    queues = lab_pbx.cli("queue show")
    assert "support has 0 calls" in queues and "'linear' strategy" in queues
    assert "sales has 0 calls" in queues
    user = lab_pbx.cli(f"manager show user {lab_pbx.ami_user}")
    assert "read perm: system,call,agent,user,dtmf" in user
    assert "write perm: call,agent,user,reporting,originate" in user
    dialplan = lab_pbx.cli("dialplan show cti-inbound")
    assert f"agi://{lab_pbx.agi_host}:{lab_pbx.agi_port}/inbound" in dialplan
    assert "Queue(${CTI_QUEUE}" in dialplan
    assert f"sip:{lab_pbx.carrier_host}:{lab_pbx.carrier_port}" in lab_pbx.cli(
        "pjsip show aor carrier")
    assert lab_pbx.ami_url == (
        f"ami://{lab_pbx.ami_user}:{lab_pbx.ami_secret}@127.0.0.1:{lab_pbx.ami_port}")


async def test_ami_reports_fully_booted_and_refuses_a_wrong_secret(lab_pbx: LabPbx) -> None:
    messages = await ami_login_events(lab_pbx, lab_pbx.ami_secret)
    assert messages[0].get("Response") == "Success"
    assert messages[-1].get("Event") == "FullyBooted"
    refused = await ami_login_events(lab_pbx, "not-the-secret")
    assert refused[-1].get("Response") == "Error"


def test_agent_registers_and_a_wrong_password_is_refused(
    lab_pbx: LabPbx, tmp_path: Path
) -> None:
    good = register_agent(lab_pbx, tmp_path, "agent3", hold=3.0)
    wait_until(lambda: "agent3/sip:agent3@127.0.0.1" in lab_pbx.cli("pjsip show contacts"),
               20, "agent3's contact")
    result = good.wait(30)
    assert result.ok, result
    wait_until(lambda: "agent3/sip:" not in lab_pbx.cli("pjsip show contacts"), 20,
               "agent3 to unregister")
    bad = register_agent(lab_pbx, tmp_path, "agent4", password="wrong", timeout=10,
                         name="register-bad")
    refused = bad.wait(30)
    assert not refused.ok and refused.failed_calls == 1, refused
    assert "agent4/sip:" not in lab_pbx.cli("pjsip show contacts")


def test_two_instances_side_by_side_and_restart_on_the_same_ports(
    lab_pbx_factory: LabPbxFactory,
) -> None:
    first = lab_pbx_factory(agents=2)
    second = lab_pbx_factory(agents=2)
    assert {first.sip_port, first.ami_port}.isdisjoint({second.sip_port, second.ami_port})
    assert first.run_dir != second.run_dir
    old_pid = first.pid
    first.kill9()
    assert not first.is_running() and first.pid is None
    assert second.is_running()
    assert "Asterisk" in second.cli("core show version")
    first.start()
    assert first.pid != old_pid and first.is_running()
    assert "support has 0 calls" in first.cli("queue show support")
    second.stop()
    assert not second.is_running()
    assert "Endpoint:  agent2" in first.cli("pjsip show endpoints")


def run_cti(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cti", *args], capture_output=True, text=True,
                          timeout=90, check=False, cwd=ROOT, env=env)


def test_cti_lab_command_starts_reports_and_stops(tmp_path: Path) -> None:
    run_dir = tmp_path / "lab"
    started = run_cti("lab", "start", "--run-dir", str(run_dir), "--agents", "2")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "AMI URL : ami://cti:" in started.stdout
        assert "agent   : agent2 / " in started.stdout
        status = run_cti("lab", "status", "--run-dir", str(run_dir))
        assert status.returncode == 0 and "running (pid" in status.stdout, status.stdout
        again = run_cti("lab", "start", "--run-dir", str(run_dir))
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stopped = run_cti("lab", "stop", "--run-dir", str(run_dir))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    pbx = LabPbx.from_state(run_dir)
    assert pbx.pid is None and not pbx.is_running()
    assert (run_dir / STATE_FILE).stat().st_mode & 0o077 == 0
    status = run_cti("lab", "status", "--run-dir", str(run_dir))
    assert status.returncode == 3 and "not running" in status.stdout


async def collect_events(
    pbx: LabPbx, sink: list[dict[str, str]], last: Callable[[dict[str, str]], bool]
) -> None:
    """Append every AMI event to ``sink`` until ``last(event)`` (bytes split first)."""
    reader, writer = await asyncio.open_connection(pbx.host, pbx.ami_port)
    try:
        await reader.readline()
        writer.write(f"Action: Login\r\nUsername: {pbx.ami_user}\r\n"
                     f"Secret: {pbx.ami_secret}\r\n\r\n".encode())
        while True:
            block = await reader.readuntil(b"\r\n\r\n")
            event = dict(line.split(": ", 1) for line in block.decode().strip().split("\r\n")
                         if ": " in line)
            sink.append(event)
            if last(event):
                return
    finally:
        writer.close()
        await writer.wait_closed()


async def test_sipp_caller_sends_rfc2833_dtmf_while_queued(
    lab_pbx: LabPbx, sipp_caller: SippFactory
) -> None:
    number = "+74950000001"
    events: list[dict[str, str]] = []
    collector = asyncio.create_task(collect_events(
        lab_pbx, events,
        lambda e: e.get("Event") == "Hangup" and e.get("CallerIDNum") == number))
    try:
        await first_event(events, lambda e: e.get("Response") == "Success", "login")
        caller = sipp_caller(number="200", caller_number=number, caller_name="Тест DTMF",
                             steps=[Pause(2.5), Dtmf("1")], hangup_after=8.0)
        result = await caller.wait_async(60)
        await asyncio.wait_for(asyncio.shield(collector), 15)
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    assert result.ok, result
    joins = [e for e in events if e.get("Event") == "QueueCallerJoin"
             and e.get("CallerIDNum") == number]
    assert [j["Queue"] for j in joins] == ["sales"]
    assert joins[0]["CallerIDName"] == "Тест DTMF"
    digits = [e["Digit"] for e in events if e.get("Event") == "DTMFEnd"
              and e.get("Uniqueid") == joins[0]["Uniqueid"] and e.get("Direction") == "Received"]
    assert digits == ["1"], events
    assert not [e for e in events if e.get("Event") in {"VarSet", "Newexten"}]


async def first_event(
    events: list[dict[str, str]], match: Callable[[dict[str, str]], bool], what: str,
    within: float = 30.0,
) -> dict[str, str]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = next((e for e in events if match(e)), None)
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no AMI event {what} within {within:g} s: {events}")
        await asyncio.sleep(0.05)


async def call_and_collect(pbx: LabPbx, workdir: Path, number: str) -> list[dict[str, str]]:
    """One call into queue support, hung up by the PBX once the caller waits there."""
    events: list[dict[str, str]] = []
    collector = asyncio.create_task(collect_events(
        pbx, events, lambda e: e.get("Event") == "Hangup" and e.get("CallerIDNum") == number))
    caller: SippProcess | None = None
    try:
        await first_event(events, lambda e: e.get("Response") == "Success", "login")
        caller = caller_call(pbx, workdir, caller_number=number, hangup_after=60.0, timeout=90)
        join = await first_event(events, lambda e: e.get("Event") == "QueueCallerJoin"
                                 and e.get("CallerIDNum") == number, "QueueCallerJoin")
        await hangup_channel(pbx, join["Channel"])
        result = await caller.wait_async(45)
        await asyncio.wait_for(asyncio.shield(collector), 15)
    finally:
        if caller is not None:
            caller.stop()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    assert result.ok, result
    return events


async def test_the_eventfilter_drops_varset_and_newexten_at_the_source(
    lab_pbx_factory: LabPbxFactory, tmp_path: Path
) -> None:
    """Even a user granted the dialplan class gets no VarSet/Newexten; without the
    filter the same call produces them (the control)."""
    read = "system,call,agent,user,dtmf,dialplan"
    filtered = lab_pbx_factory(agents=1, ami_read=read)
    unfiltered = lab_pbx_factory(agents=1, ami_read=read, ami_eventfilters=())
    noisy = {"VarSet", "Newexten"}
    with_filter = await call_and_collect(filtered, tmp_path / "f", "+74950000002")
    without = await call_and_collect(unfiltered, tmp_path / "u", "+74950000003")
    assert {e.get("Event") for e in without} >= noisy
    assert not noisy & {e.get("Event") for e in with_filter}
    assert "QueueCallerJoin" in {e.get("Event") for e in with_filter}


def test_templates_render_strictly_and_keep_asterisk_variables(tmp_path: Path) -> None:
    pbx = LabPbx(tmp_path / "lab", agents=2)
    params = pbx.template_params()
    written = render_templates(params, tmp_path / "etc")
    names = {p.name for p in written}
    assert {"asterisk.conf", "pjsip.conf", "queues.conf", "manager.conf", "extensions.conf",
            "extensions_ivr.conf", "modules.conf", "rtp.conf", "logger.conf"} <= names
    extensions = (tmp_path / "etc" / "extensions.conf").read_text()
    assert "Dial(PJSIP/${EXTEN}@carrier,60)" in extensions
    assert "exten => 1002,1,Dial(PJSIP/agent2,30)" in extensions
    manager = (tmp_path / "etc" / "manager.conf").read_text()
    assert "eventfilter = !Event: VarSet" in manager and f"secret = {pbx.ami_secret}" in manager
    del params["agi_port"]
    with pytest.raises(LabPbxError, match="agi_port"):
        render_templates(params, tmp_path / "etc2")


def test_a_missing_asterisk_binary_is_named_in_the_error(tmp_path: Path) -> None:
    pbx = LabPbx(tmp_path / "lab", asterisk_binary=str(tmp_path / "no-such-asterisk"))
    with pytest.raises(LabPbxError, match="no-such-asterisk"):
        pbx.start()
    assert pbx.pid is None


def test_ports_grabbed_before_boot_are_replaced_or_reported(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        pbx = LabPbx(tmp_path / "auto", agents=1)
        pbx.sip_port = taken  # as if someone grabbed the free port it picked
        pbx.start()
        try:
            assert pbx.sip_port != taken and pbx.is_running()
            assert f"127.0.0.1:{pbx.sip_port}" in pbx.cli("pjsip show transports")
        finally:
            pbx.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        given = LabPbx(tmp_path / "given", agents=1, ami_port=port)
        with pytest.raises(PortTaken, match=f"AMI port {port}"):
            given.start()
        assert given.pid is None and given.ami_port == port
