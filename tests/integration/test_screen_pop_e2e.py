"""Voice end to end: SIPp caller -> lab Asterisk queue -> AMI link -> cti -> agent's WebSocket.

The screen pop must reach agent1's socket while agent1's pjsua2 phone is still
only ringing; after answer and hangup the customer's history holds the call
offered, answered and ended with its durations. Runs on SQLite and PostgreSQL.
A second test kills the lab Asterisk (SIGKILL) under the running server and
watches ``/api/v1/health`` go down and come back up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.config import AmiServer, BootstrapAdmin, Settings
from cti.lab import LabPbx
from cti.links.pbx import PBX_LINKS, setup_pbx_links
from pbx.link import LinkSettings

pytestmark = pytest.mark.integration

TIMEOUT = 40.0
ADMIN = ("admin", "admin-password")
PASSWORD = "agent1-password"
NUMBER = "+79161234567"
NAME = "Иван Петров"
FAST = LinkSettings(ping_interval=1.0, ping_timeout=3.0, backoff_min=0.2, backoff_max=1.0,
                    auth_retry=1.0)


@dataclass
class Desk:
    client: TestClient[Any, Any]
    app: Any
    admin: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}

    async def link(self) -> dict[str, Any]:
        resp = await self.client.get("/api/v1/health")
        assert resp.status in (200, 503), await resp.text()
        links: dict[str, Any] = (await resp.json())["links"]
        assert "pbx:lab" in links, links
        link: dict[str, Any] = links["pbx:lab"]
        return link


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def next_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        data: dict[str, Any] = json.loads(msg.data)
        if data.get("type") == kind:
            return data


def lab_settings(lab: LabPbx, db_url: str, data_dir: Path) -> Settings:
    return Settings(
        db_url=db_url,
        data_dir=data_dir,
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN),
        history_flush_interval=0.01,
        ami=(AmiServer("lab", lab.host, lab.ami_port, lab.ami_user, lab.ami_secret),),
    )


async def start_desk(settings: Settings) -> Desk:
    app = create_app(settings)
    setup_pbx_links(app, FAST)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    resp = await client.post("/api/v1/auth/token", json={"login": ADMIN[0], "password": ADMIN[1]})
    assert resp.status == 200, await resp.text()
    return Desk(client, app, (await resp.json())["token"])


@pytest.fixture
async def desk(db_url: str, tmp_path: Path, lab_pbx: LabPbx) -> AsyncIterator[Desk]:
    d = await start_desk(lab_settings(lab_pbx, db_url, tmp_path))
    try:
        yield d
    finally:
        await d.client.close()


async def test_screen_pop_before_answer_then_history(
    desk: Desk, phone_factory: Any, sipp_caller: Any
) -> None:
    client = desk.client
    resp = await client.post(
        "/api/v1/agents",
        json={"login": "agent1", "password": PASSWORD, "name": "Агент 1",
              "endpoint": "PJSIP/agent1", "queues": ["support"]},
        headers=desk.auth(),
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/api/v1/customers",
        json={"name": "Иван Петров (VIP)", "phones": ["8 916 123-45-67"]},
        headers=desk.auth(),
    )
    assert resp.status == 201, await resp.text()
    customer = await resp.json()
    resp = await client.post("/api/v1/auth/token", json={"login": "agent1", "password": PASSWORD})
    token = (await resp.json())["token"]
    ws = await client.ws_connect("/api/v1/events", params={"token": token})
    assert (await next_frame(ws, "hello"))["type"] == "hello"

    async def pbx_up() -> bool:
        return bool((await desk.link())["up"])

    await until("the pbx:lab link up", pbx_up)
    link = desk.app[PBX_LINKS]["lab"]
    await link.queue_pause("PJSIP/agent1", False, "support")  # whatever an earlier test left
    phone = await phone_factory("agent1")

    async def agent1_free() -> bool:
        support = link.queue("support")
        return support is not None and any(
            m.interface == "PJSIP/agent1" and m.device_state == "NOT_INUSE" and not m.paused
            for m in support.members
        )

    await until("agent1 NOT_INUSE in the support queue", agent1_free)

    caller = sipp_caller(number="100", caller_number=NUMBER, caller_name=NAME, hangup_after=30)
    pop = await next_frame(ws, "screen_pop")
    # The pop arrived: the phone has not been answered (at most ringing).
    assert phone.state in ("idle", "ringing"), phone.state
    assert pop["channel"] == "voice"
    assert pop["customer"]["id"] == customer["id"]
    conversation_id = pop["conversation"]["id"]

    await phone.wait_for_incoming(20)
    assert phone.state == "ringing"
    await asyncio.sleep(1.0)
    await phone.answer()
    await phone.wait_state("connected", 10)
    await asyncio.sleep(1.5)
    await phone.hangup()

    events: dict[str, dict[str, Any]] = {}

    async def ended() -> bool:
        resp = await client.get(
            f"/api/v1/customers/{customer['id']}/history",
            params={"limit": "100"},
            headers=desk.auth(token),
        )
        assert resp.status == 200, await resp.text()
        events.clear()
        for ev in (await resp.json())["events"]:
            if ev["conversation_id"] == conversation_id:
                events.setdefault(ev["kind"], ev)
        return "call_ended" in events

    await until("call_ended in the customer's history", ended)
    assert {"call_offered", "call_answered", "call_ended"} <= set(events), sorted(events)
    assert events["call_offered"]["channel"] == "voice"
    done = events["call_ended"]["payload"]
    assert done["wait"] > 0 and done["ring"] >= 0.8, done
    assert done["talk"] >= 1.0, done
    assert events["call_answered"]["payload"]["ring"] >= 0.8
    result = await caller.wait_async(40)
    assert result.successful_calls == 1, result
    await ws.close()


async def test_health_follows_asterisk_crash_and_restart(
    tmp_path: Path, lab_pbx_factory: Callable[..., LabPbx]
) -> None:
    lab = lab_pbx_factory()
    settings = lab_settings(lab, f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}", tmp_path)
    desk = await start_desk(settings)
    try:
        async def up() -> bool:
            return bool((await desk.link())["up"])

        async def down() -> bool:
            return not (await desk.link())["up"]

        await until("pbx:lab up", up)
        first = await desk.link()
        lab.kill9()
        await until("pbx:lab down after kill -9", down)
        assert (await desk.link())["detail"], "a down link says why"
        await asyncio.to_thread(lab.start)
        await until("pbx:lab up after the restart", up)
        again = await desk.link()
        assert again["connects"] > first["connects"]
    finally:
        await desk.client.close()
