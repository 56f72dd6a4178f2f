"""The project's softphone linked to the server (issue #7 part 5).

First the phone API alone (no PBX): 409 with no softphone linked, 422 on bad
commands, 202 delivering to the softphone's socket only; the link's token
renewal, seq resume and error reports. Then the whole server on the lab PBX
with agent1's pjsua2 phone linked through ``DeskLink``: a known customer
calls, the notification names her before the answer, the desk answers, holds,
unholds, sends DTMF (received by the customer) and hangs up. Last, the
``cti phone --cti`` command itself, driven by the desk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.config import AmiServer, BootstrapAdmin, Settings
from cti.keys import SERVICES
from cti.links.pbx import PBX_LINKS
from cti.serve import build_app
from cti.softphone.link import DeskLink, RecordingNotifier

ADMIN = ("admin", "admin-password")
PASSWORD = "agent1-password"
TIMEOUT = 40.0


async def frame(ws: aiohttp.ClientWebSocketResponse, kind: str,
                within: float = TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        data: dict[str, Any] = json.loads(msg.data)
        if data.get("type") == kind:
            return data


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                        data_dir=tmp_path, secret_key="test-secret",
                        bootstrap_admin=BootstrapAdmin(*ADMIN), history_flush_interval=0.01)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def _token(client: TestClient[Any, Any], login: str, password: str) -> str:
    resp = await client.post("/api/v1/auth/token", json={"login": login, "password": password})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def test_phone_commands_reach_the_linked_softphone_only(
    bare: TestClient[Any, Any],
) -> None:
    admin = {"Authorization": f"Bearer {await _token(bare, *ADMIN)}"}
    for login in ("agent1", "agent2"):
        resp = await bare.post("/api/v1/agents", headers=admin,
                               json={"login": login, "password": PASSWORD})
        assert resp.status == 201, await resp.text()
    me = {"Authorization": f"Bearer {await _token(bare, 'agent1', PASSWORD)}"}
    other = await _token(bare, "agent2", PASSWORD)

    resp = await bare.post("/api/v1/agents/me/phone", json={"action": "answer"}, headers=me)
    assert resp.status == 409, await resp.text()
    assert (await resp.json())["error"]["code"] == "no_softphone"

    desk = await bare.ws_connect("/api/v1/events", params={"token": me["Authorization"][7:]})
    await frame(desk, "hello")
    stranger = await bare.ws_connect("/api/v1/events", params={"token": other,
                                                               "client": "softphone"})
    await frame(stranger, "hello")
    soft = await bare.ws_connect("/api/v1/events")
    await soft.send_json({"type": "auth", "token": me["Authorization"][7:],
                          "client": "softphone"})
    await frame(soft, "hello")
    assert (await frame(desk, "phone_link"))["softphones"] == 1
    resp = await bare.get("/api/v1/agents/me/phone", headers=me)
    assert (await resp.json()) == {"softphones": 1}

    for bad in ({"action": "explode"}, {"action": "dtmf"}, {"action": "dtmf", "digits": "12x"},
                {"action": "dtmf", "digits": "1" * 33}, {"action": "answer", "digits": "1"},
                {"action": 5}):
        resp = await bare.post("/api/v1/agents/me/phone", json=bad, headers=me)
        assert resp.status == 422, (bad, await resp.text())

    resp = await bare.post("/api/v1/agents/me/phone", json={"action": "dtmf", "digits": "12*#a"},
                           headers=me)
    assert resp.status == 202, await resp.text()
    sent = await resp.json()
    assert sent["delivered"] == 1
    cmd = await frame(soft, "phone_command")
    assert cmd == {"type": "phone_command", "action": "dtmf", "digits": "12*#A", "id": sent["id"]}
    assert "seq" not in cmd, "commands are never replayed"

    resp = await bare.post("/api/v1/agents/me/phone/state", headers=me,
                           json={"state": "ringing", "call": {"caller_name": "<b>Иван</b>"}})
    assert resp.status == 202, await resp.text()
    state = await frame(desk, "phone_state")
    assert state["state"] == "ringing" and state["call"]["caller_name"] == "<b>Иван</b>"
    resp = await bare.post("/api/v1/agents/me/phone/state", headers=me, json={"state": "bogus"})
    assert resp.status == 422

    with pytest.raises(asyncio.TimeoutError):  # agent2's softphone got nothing of agent1's
        await frame(stranger, "phone_command", within=0.5)
    await soft.close()
    assert (await frame(desk, "phone_link"))["softphones"] == 0
    resp = await bare.post("/api/v1/agents/me/phone", json={"action": "hangup"}, headers=me)
    assert resp.status == 409
    await desk.close()
    await stranger.close()


async def test_link_renews_token_resumes_by_seq_and_reports_failed_commands(
    tmp_path: Path, customer_phone_factory: Any,
) -> None:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                        data_dir=tmp_path, secret_key="test-secret", token_ttl=3.0,
                        bootstrap_admin=BootstrapAdmin(*ADMIN), history_flush_interval=0.01)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        admin = {"Authorization": f"Bearer {await _token(client, *ADMIN)}"}
        resp = await client.post("/api/v1/agents", headers=admin,
                                 json={"login": "agent1", "password": PASSWORD})
        assert resp.status == 201, await resp.text()
        agent_id = (await resp.json())["id"]
        hub = client.server.app[SERVICES].hub
        phone = await customer_phone_factory.customer(0, username="agent1")
        notifier = RecordingNotifier()
        url = str(client.make_url("")).rstrip("/")
        async with DeskLink(url, "agent1", PASSWORD, phone, notifier,
                            backoff=(0.1, 0.5)) as link:
            await asyncio.wait_for(link.linked.wait(), TIMEOUT)
            first_token = link.token
            me = {"Authorization": f"Bearer {link.token}"}
            # A failed command comes back to the desk as a phone_state with the error.
            desk = await client.ws_connect("/api/v1/events", params={"token": link.token})
            await frame(desk, "hello")
            resp = await client.post("/api/v1/agents/me/phone", json={"action": "answer"},
                                     headers=me)
            assert resp.status == 202, await resp.text()
            cid = (await resp.json())["id"]
            report = await frame(desk, "phone_state")
            while report.get("command_id") != cid:
                report = await frame(desk, "phone_state")
            assert "nothing to answer" in report["error"] and report["state"] == "idle"

            # Dropped socket: events published meanwhile are replayed on resume.
            await link.drop_socket()
            hub.publish([agent_id], "screen_pop",
                        {"channel": "voice", "customer": {"name": "Иван Петров"},
                         "interaction": {"caller": "+79161234567"}})
            shown = await notifier.wait_for("Иван Петров", TIMEOUT)
            assert shown == ("Incoming call", "Иван Петров <+79161234567>")
            assert link.connects >= 2

            # The token (3 s) is renewed before it expires; the link stays usable.
            deadline = time.monotonic() + TIMEOUT
            while link.logins < 3:
                assert time.monotonic() < deadline, "token not renewed"
                await asyncio.sleep(0.1)
            assert link.token != first_token
            resp = await client.get("/api/v1/agents/me/phone",
                                    headers={"Authorization": f"Bearer {link.token}"})
            assert resp.status == 200 and (await resp.json())["softphones"] == 1
            assert "password" not in repr(link).replace("password=<hidden>", "")
            await desk.close()
    finally:
        await client.close()


@pytest.mark.integration
async def test_desk_drives_the_linked_softphone_on_the_lab_pbx(
    tmp_path: Path, lab_pbx: Any, phone_factory: Any,
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}", data_dir=tmp_path,
        secret_key="test-secret", bootstrap_admin=BootstrapAdmin(*ADMIN),
        history_flush_interval=0.01,
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
    )
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        admin = {"Authorization": f"Bearer {await _token(client, *ADMIN)}"}
        resp = await client.post("/api/v1/agents", headers=admin, json={
            "login": "agent1", "password": PASSWORD, "name": "Агент 1",
            "endpoint": "PJSIP/agent1", "queues": ["support"]})
        assert resp.status == 201, await resp.text()
        resp = await client.post("/api/v1/customers", headers=admin, json={
            "name": "Иван Петров", "phones": ["8 916 123-45-67"]})
        assert resp.status == 201, await resp.text()

        link_ami = app[PBX_LINKS]["lab"]
        await link_ami.wait_up(TIMEOUT)
        await link_ami.queue_pause("PJSIP/agent1", False, "support")
        phone = await phone_factory("agent1")
        notifier = RecordingNotifier()
        url = str(client.make_url("")).rstrip("/")
        async with DeskLink(url, "agent1", PASSWORD, phone, notifier) as link:
            await asyncio.wait_for(link.linked.wait(), TIMEOUT)
            token = link.token
            me = {"Authorization": f"Bearer {token}"}
            desk = await client.ws_connect("/api/v1/events", params={"token": token})
            await frame(desk, "hello")

            async def command(action: str, **extra: str) -> None:
                resp = await client.post("/api/v1/agents/me/phone", headers=me,
                                         json={"action": action, **extra})
                assert resp.status == 202, await resp.text()
                assert (await resp.json())["delivered"] == 1

            async def desk_sees(state: str) -> dict[str, Any]:
                while True:
                    report = await frame(desk, "phone_state")
                    assert "error" not in report, report
                    if report["state"] == state:
                        return report

            deadline = time.monotonic() + TIMEOUT
            while not any(m.interface == "PJSIP/agent1" and m.device_state == "NOT_INUSE"
                          and not m.paused
                          for m in (getattr(link_ami.queue("support"), "members", ()))):
                assert time.monotonic() < deadline, "agent1 not free in the support queue"
                await asyncio.sleep(0.1)

            # The customer is a pjsua2 UA calling the trunk (SIPp cannot report the
            # RFC 4733 digits it receives, and Asterisk's native RTP bridge forwards
            # them without a DTMF event, so the far end is where digits are checked).
            customer = await phone_factory.customer(0, username="customer")
            await customer.call(f"sip:100@{lab_pbx.host}:{lab_pbx.sip_port}",
                                caller_id="+79161234567", caller_name="Caller")
            title, body = await notifier.wait_for("Иван Петров", TIMEOUT)
            assert phone.state in ("idle", "ringing"), "notified before answering"
            assert title == "Incoming call" and "+79161234567" in body
            await phone.wait_state("ringing", TIMEOUT)
            ringing = await desk_sees("ringing")
            assert ringing["call"]["caller_number"].endswith("9161234567"), ringing

            await command("answer")
            await phone.wait_state("connected", 15)
            await desk_sees("connected")
            await customer.wait_state("connected", 15)
            await command("hold")
            await phone.wait_state("held", 15)
            await desk_sees("held")
            await command("unhold")
            await phone.wait_state("connected", 15)
            await desk_sees("connected")
            await command("dtmf", digits="159#")
            assert await customer.wait_dtmf(4, 20) == "159#"
            await command("hangup")
            await phone.wait_state("disconnected", 15)
            await desk_sees("registered")
            await _until(lambda: len(link.executed) == 5)
            assert [(a, e) for _, a, e in link.executed] == [
                ("answer", None), ("hold", None), ("unhold", None), ("dtmf", None),
                ("hangup", None)]
            await customer.wait_state("disconnected", 15)
            await desk.close()
    finally:
        await client.close()


async def _until(check: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _line(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"`cti phone` ended before printing {needle!r}: {seen}")
        seen.append(raw.decode("utf-8", "replace").rstrip("\n"))
        if needle in seen[-1]:
            return seen[-1]


@pytest.mark.integration
async def test_cti_phone_command_is_driven_by_the_desk(
    tmp_path: Path, lab_pbx: Any, phone_factory: Any,
) -> None:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                        data_dir=tmp_path, secret_key="test-secret",
                        bootstrap_admin=BootstrapAdmin(*ADMIN), history_flush_interval=0.01)
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    sip_secret = lab_pbx.agents["agent2"]
    proc = None
    seen: list[str] = []
    try:
        admin = {"Authorization": f"Bearer {await _token(client, *ADMIN)}"}
        resp = await client.post("/api/v1/agents", headers=admin,
                                 json={"login": "agent2", "password": PASSWORD})
        assert resp.status == 201, await resp.text()
        agent_id = (await resp.json())["id"]
        me = {"Authorization": f"Bearer {await _token(client, 'agent2', PASSWORD)}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cti.softphone.cli",
            "--server", f"{lab_pbx.host}:{lab_pbx.sip_port}", "--user", "agent2",
            "--cti", str(client.make_url("")).rstrip("/"), "--no-notify-send",
            env={**os.environ, "CTI_PHONE_PASSWORD": sip_secret,
                 "CTI_DESK_PASSWORD": PASSWORD},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(90):
            await _line(proc.stdout, "Linked to the CTI server", seen)
            hub = client.server.app[SERVICES].hub
            await _until(lambda: hub.clients(agent_id, "softphone") == 1)
            hub.publish(
                [agent_id], "screen_pop",
                {"channel": "voice", "customer": {"name": "Иван Петров"},
                 "interaction": {"caller": "+79161234567"}})
            assert await _line(proc.stdout, "Incoming call: Иван", seen) == (
                "Incoming call: Иван Петров <+79161234567>")
            agent1 = await phone_factory("agent1")
            await agent1.call(f"sip:1002@{lab_pbx.host}:{lab_pbx.sip_port}")
            await _line(proc.stdout, "Incoming call: Agent 1", seen)
            resp = await client.post("/api/v1/agents/me/phone", headers=me,
                                     json={"action": "answer"})
            assert resp.status == 202, await resp.text()
            await agent1.wait_state("connected", 15)
            resp = await client.post("/api/v1/agents/me/phone", headers=me,
                                     json={"action": "hangup"})
            assert resp.status == 202, await resp.text()
            await agent1.wait_state("disconnected", 15)
            proc.send_signal(signal.SIGTERM)
            rest, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        output = "\n".join(seen) + rest.decode() + err.decode()
        assert sip_secret not in output and PASSWORD not in output
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await client.close()
