"""Agent call control over the REST API (cti.links.callcontrol) against the lab PBX."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.config import AmiServer, BootstrapAdmin, Settings
from cti.lab import LabPbx
from cti.links.callcontrol import setup_call_control
from cti.links.pbx import PBX_LINKS, setup_pbx_links
from pbx.actions import PbxError
from pbx.link import AmiLink, LinkSettings

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
ADMIN = ("admin", "admin-password")
FAST = LinkSettings(ping_interval=1.0, ping_timeout=3.0, backoff_min=0.2, backoff_max=1.0)


async def until(what: str, check: Callable[[], bool], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Api:
    client: TestClient[Any, Any]
    link: AmiLink
    tokens: dict[str, str]

    async def post(self, who: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.client.post(
            path, json=body or {}, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )

    def member(self, interface: str, queue: str = "support") -> Any:
        q = self.link.queue(queue)
        return next((m for m in q.members if m.interface == interface), None) if q else None

    async def ready(self, interface: str) -> None:
        await self.link.queue_pause(interface, False, "support")  # whatever an earlier test left
        await until(f"{interface} NOT_INUSE", lambda: (m := self.member(interface)) is not None
                    and m.device_state == "NOT_INUSE" and not m.paused)


@pytest.fixture
async def api(tmp_path: Path, lab_pbx: LabPbx) -> AsyncIterator[Api]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
        data_dir=tmp_path,
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN),
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
    )
    app = create_app(settings)
    setup_pbx_links(app, FAST)
    setup_call_control(app)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post("/api/v1/auth/token",
                                 json={"login": ADMIN[0], "password": ADMIN[1]})
        tokens = {"admin": (await resp.json())["token"]}
        for login in ("agent1", "agent2", "agent3"):
            resp = await client.post(
                "/api/v1/agents",
                json={"login": login, "password": f"{login}-pw", "name": login.title(),
                      "endpoint": f"PJSIP/{login}", "queues": ["support"]},
                headers={"Authorization": f"Bearer {tokens['admin']}"},
            )
            assert resp.status == 201, await resp.text()
            resp = await client.post("/api/v1/auth/token",
                                     json={"login": login, "password": f"{login}-pw"})
            tokens[login] = (await resp.json())["token"]
        link = app[PBX_LINKS]["lab"]
        await link.wait_up(TIMEOUT)
        yield Api(client, link, tokens)
    finally:
        await client.close()


async def test_pause_with_reason_and_bad_input(api: Api) -> None:
    try:
        resp = await api.post("agent2", "/api/v1/agents/me/pause",
                              {"paused": True, "reason": "обед", "queue": "support"})
        assert resp.status == 200, await resp.text()
        await until("agent2 paused with its reason", lambda: (m := api.member("PJSIP/agent2"))
                    is not None and m.paused and m.pause_reason == "обед")
        resp = await api.post("agent2", "/api/v1/agents/me/pause", {"paused": False})
        assert resp.status == 200, await resp.text()
        await until("agent2 unpaused", lambda: (m := api.member("PJSIP/agent2")) is not None
                    and not m.paused)
    finally:
        with contextlib.suppress(PbxError):
            await api.link.queue_pause("PJSIP/agent2", False, "support")
    resp = await api.post("agent2", "/api/v1/agents/me/pause", {"paused": "yes"})
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "paused"
    resp = await api.post("agent1", "/api/v1/calls", {"number": "123; Hangup"})
    assert resp.status == 422
    resp = await api.post("agent1", "/api/v1/calls/lab:nope.1/hangup")
    assert resp.status == 404
    resp = await api.post("admin", "/api/v1/calls", {"number": "100"})
    assert resp.status == 409  # the admin has no SIP endpoint


async def test_click_to_dial_then_hangup(api: Api, lab_pbx: LabPbx, phone_factory: Any) -> None:
    # agent1 dials agent2's extension: the callee is a second pjsua2 phone
    agent = await phone_factory("agent1")
    callee = await phone_factory("agent2")
    await api.ready("PJSIP/agent1")
    await api.ready("PJSIP/agent2")
    placing = asyncio.create_task(api.post("agent1", "/api/v1/calls",
                                           {"number": lab_pbx.agent_exten("agent2")}))
    await agent.wait_for_incoming(20)
    assert callee.state == "idle"  # agent first
    await agent.answer()
    resp = await asyncio.wait_for(placing, TIMEOUT)
    assert resp.status == 201, await resp.text()
    placed = await resp.json()
    assert placed["pbx"] == "lab" and placed["channel"].startswith("PJSIP/agent1-")
    await callee.wait_for_incoming(20)
    await callee.answer()
    await callee.wait_state("connected", 10)
    call_id = placed["call_id"]
    await until("the call connected", lambda: (s := api.link.call(call_id)) is not None
                and len(s.legs) == 2)
    resp = await api.post("agent3", f"/api/v1/calls/{call_id}/hangup")
    assert resp.status == 403  # not agent3's call
    resp = await api.post("agent1", f"/api/v1/calls/{call_id}/hangup")
    assert resp.status == 200, await resp.text()
    await callee.wait_state("disconnected", 10)
    await agent.wait_state("disconnected", 10)
    await until("the call gone", lambda: api.link.call(call_id) is None)


async def test_blind_transfer_to_a_colleague(
    api: Api, lab_pbx: LabPbx, phone_factory: Any, sipp_caller: Any
) -> None:
    agent1 = await phone_factory("agent1")
    agent2 = await phone_factory("agent2")
    await api.ready("PJSIP/agent1")
    await api.ready("PJSIP/agent2")
    sipp_caller(number="100", caller_number="+79160000077", hangup_after=60)
    await agent1.wait_for_incoming(20)
    await agent1.answer()
    await agent1.wait_state("connected", 10)
    calls: list[Any] = []

    def answered() -> bool:
        calls[:] = [c for c in api.link.calls() if c.caller_number == "+79160000077"
                    and c.agent_interface == "PJSIP/agent1" and c.state.value == "connected"]
        return bool(calls)

    await until("the queue call connected to agent1", answered)
    call_id = calls[0].call_id
    resp = await api.post("agent1", f"/api/v1/calls/{call_id}/transfer",
                          {"target": lab_pbx.agent_exten("agent2")})
    assert resp.status == 200, await resp.text()
    assert not (await resp.json())["channel"].startswith("PJSIP/agent1-")
    await agent2.wait_for_incoming(20)
    await agent2.answer()
    await agent1.wait_state("disconnected", 10)
    await until("agent2 holds the call", lambda: (s := api.link.call(call_id)) is not None
                and s.agent_interface == "PJSIP/agent2")
    resp = await api.post("agent2", f"/api/v1/calls/{call_id}/hangup")
    assert resp.status == 200, await resp.text()
    await agent2.wait_state("disconnected", 10)

