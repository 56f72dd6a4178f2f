"""The whole server (cti.serve.build_app) against the lab Asterisk and the test SMSC:
the FastAGI server on the lab dialplan's AGI address, the AMI link, the SMPP link."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cti.config import AmiServer, BootstrapAdmin, HostPort, Settings, SmppLink
from cti.customers import ContactInput
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.ivr import IVR_SERVER
from cti.links.pbx import PBX_LINKS
from cti.models import Conversation
from cti.serve import build_app
from cti.services import Services
from cti.softphone import SoftPhone
from ivr.server import FastAgiServer
from ivr.session import AgiSession
from tests.integration.ivr.ami import AmiProbe
from tests.peers.ports import free_port
from tests.peers.smsc import Smsc

TIMEOUT = 60.0
ADMIN = ("admin", "admin-password")
PASSWORD = "agent-password"
LINK_RE = re.compile(r"https?://\S+/c/[A-Za-z0-9_-]+")


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def agi_session(agi: FastAgiServer, number: str, script: str) -> AgiSession | None:
    """The running ``script`` flow of the call from ``number``, if any."""
    for session in agi.sessions():
        env = session.environment
        if env.script == script and env.caller_number == number:
            return session
    return None


async def key_in(agi: FastAgiServer, phone: SoftPhone, number: str, step: str, digit: str,
                 *, script: str = "inbound", within: float = TIMEOUT) -> None:
    """The caller's phone keys ``digit`` (RFC 2833) when the IVR asks at ``step``.

    Theory of operation: Asterisk drops DTMF that reaches an AGI channel between
    two commands, and a prompt without escape digits ignores it, so the digit is
    sent only while ``read_digits`` can take it: during its first attempt's
    prompts (all escapable STREAM FILEs, then GET DATA), or, after a miss (the
    session counted an invalid input), during the retry's GET DATA only (the
    invalid-option prompt before it is not escapable). Done once the flow left
    ``step``; never pressed twice for one attempt.
    """
    deadline = time.monotonic() + within
    seen: AgiSession | None = None
    first_invalid = 0
    pressed_invalid: int | None = None
    while True:
        if time.monotonic() > deadline:
            pytest.fail(f"{script} flow of {number}: {digit} at {step} not taken "
                        f"within {within:g} s")
        session = agi_session(agi, number, script)
        if seen is not None and (session is not seen or seen.step != step):
            return  # the flow went on (or ended: the test's assertions say how)
        if session is not None and session.step == step:
            if seen is None:
                seen, first_invalid = session, session.invalid_inputs
            if pressed_invalid is not None and session.invalid_inputs != pressed_invalid:
                pressed_invalid = None  # not heard: the IVR asks again
            command = session.pending_command
            if pressed_invalid is None and (command == "GET DATA" or (
                    command == "STREAM FILE" and session.invalid_inputs == first_invalid)):
                pressed_invalid = session.invalid_inputs
                await phone.send_dtmf(digit)
        await asyncio.sleep(0.05)


async def press_while_queued(phone: SoftPhone, digit: str, queued: Callable[[], bool],
                             done: Callable[[], Awaitable[bool]], within: float = 90.0,
                             again_after: float = 5.0) -> None:
    """The caller's phone keys ``digit`` (RFC 2833) while it waits in Queue().

    A digit heard in the queue takes the caller to the exit context at once (it
    leaves the queue), so it is pressed again only if the caller still waits
    ``again_after`` seconds later, until ``done``.
    """
    deadline = time.monotonic() + within
    pressed_at = float("-inf")
    while not await done():
        now = time.monotonic()
        if now > deadline:
            pytest.fail(f"pressing {digit} in the queue had no effect within {within:g} s")
        if queued() and now - pressed_at > again_after:
            await phone.send_dtmf(digit)
            pressed_at = now
        await asyncio.sleep(0.1)


@dataclass
class Agent:
    login: str
    token: str
    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def next_frame(self, kind: str, within: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{self.login}: no {kind} frame within {within:g} s")
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                continue
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data: dict[str, Any] = json.loads(msg.data)
            self.frames.append(data)
            if data.get("type") == kind:
                return data


@dataclass
class Server:
    client: TestClient[Any, Any]
    services: Services
    pbx: LabPbx
    smsc: Smsc
    admin: str
    ami: AmiProbe
    app: web.Application
    agents: list[Agent] = field(default_factory=list)

    def waiting_channel(self, number: str, queue: str = "support") -> str | None:
        """The caller's channel while it waits in ``queue`` (the server's live tracker)."""
        snap = self.app[PBX_LINKS]["lab"].queue(queue)
        for caller in snap.waiting if snap is not None else ():
            if caller.caller_number == number:
                return str(caller.channel)
        return None

    async def press_in_queue(self, number: str, digit: str, done: Callable[[], Awaitable[bool]],
                             queue: str = "support") -> None:
        """Once the caller waits in the queue, ``digit`` as DTMF received from the
        caller (AMI PlayDTMF Receive), re-pressed until ``done``."""
        channel: list[str] = []

        async def queued() -> bool:
            found = self.waiting_channel(number, queue)
            channel[:] = [found] if found else []
            return found is not None

        await until(f"{number} waiting in {queue}", queued, within=90)
        for _ in range(10):
            response = await self.ami.action({"Action": "PlayDTMF", "Channel": channel[0],
                                              "Digit": digit, "Duration": "250",
                                              "Receive": "true"})
            assert response.get("Response") == "Success", response
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                if await done():
                    return
                await asyncio.sleep(0.1)
        pytest.fail(f"pressing {digit} in {queue} had no effect for {number}")

    @property
    def agi(self) -> FastAgiServer:
        return self.app[IVR_SERVER][0]

    async def health(self) -> dict[str, Any]:
        resp = await self.client.get("/api/v1/health")
        links: dict[str, Any] = (await resp.json())["links"]
        return links

    async def customer(self, name: str, phone: str) -> int:
        row = await self.services.customers.create(
            name, [ContactInput("phone", phone)], external_id=None,
            custom={"orders": [{"id": "5120", "state": "shipped",
                                "placed_at": "2026-11-18T17:40:00+00:00"}]},
        )
        return row.id

    async def agent(self, login: str, endpoint: str, **extra: Any) -> Agent:
        admin = {"Authorization": f"Bearer {self.admin}"}
        resp = await self.client.post(
            "/api/v1/agents",
            json={"login": login, "password": PASSWORD, "name": login.title(),
                  "endpoint": endpoint, "queues": ["support"], **extra},
            headers=admin,
        )
        assert resp.status == 201, await resp.text()
        resp = await self.client.post("/api/v1/auth/token",
                                      json={"login": login, "password": PASSWORD})
        token = (await resp.json())["token"]
        ws = await self.client.ws_connect("/api/v1/events", params={"token": token})
        agent = Agent(login, token, ws)
        await agent.next_frame("hello")
        self.agents.append(agent)
        return agent

    async def pause(self, agent: Agent, paused: bool) -> None:
        resp = await self.client.post("/api/v1/agents/me/pause", json={"paused": paused},
                                      headers=agent.auth())
        assert resp.status == 200, await resp.text()

        async def applied() -> bool:
            row = await self.services.agents.by_login(agent.login)
            return row is not None and row.available is not paused

        await until(f"{agent.login} {'paused' if paused else 'available'} for text", applied)

    async def history(self, customer_id: int) -> list[dict[str, Any]]:
        resp = await self.client.get(f"/api/v1/customers/{customer_id}/history",
                                     params={"limit": "200"}, headers={
                                         "Authorization": f"Bearer {self.admin}"})
        assert resp.status == 200, await resp.text()
        events: list[dict[str, Any]] = (await resp.json())["events"]
        return events

    async def sms_links_to(self, number: str) -> list[str]:
        """Chat links in the SMS the SMSC got for ``number`` (reassembled when split)."""
        texts: list[str] = []
        state = await self.smsc.state()
        for message in state.get("messages", {}).values():
            if message.get("complete") and message.get("text"):
                texts.append(str(message["text"]))
        texts += [str(s["text"]) for s in self.smsc.recorded_submits()
                  if s.get("text") and s.get("destination") == number.lstrip("+")]
        return [m.group(0) for t in texts for m in LINK_RE.finditer(t)]

    async def deflected(self, contact: str) -> Conversation | None:
        for conv in await self.services.conversations.queued("support"):
            if conv.channel == "chat" and conv.contact == contact:
                return conv
        return None


@pytest.fixture
async def server(lab_pbx: LabPbx, smsc: Smsc, tmp_path: Path) -> AsyncIterator[Server]:
    port = free_port()
    settings = Settings(
        http_listen=HostPort("127.0.0.1", port),
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
        data_dir=tmp_path / "data",
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN),
        history_flush_interval=0.01,
        ivr_digit_timeout=2.0,
        ivr_retries=1,
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
        agi_listen=HostPort(lab_pbx.agi_host, lab_pbx.agi_port),
        smpp=(SmppLink("smpp1", "127.0.0.1", smsc.smpp_port, "cti", "secret", url=smsc.url()),),
    )
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    srv: Server | None = None
    try:
        resp = await client.post("/api/v1/auth/token",
                                 json={"login": ADMIN[0], "password": ADMIN[1]})
        ami = AmiProbe()
        await ami.connect(lab_pbx.ami_url)
        srv = Server(client, app[SERVICES], lab_pbx, smsc, (await resp.json())["token"], ami,
                     app)

        async def links_up() -> bool:
            links = await srv.health() if srv else {}
            return all(links.get(name, {}).get("up") for name in ("pbx:lab", "smpp:smpp1", "ivr"))

        await until("the AMI, SMPP and IVR links", links_up)
        yield srv
    finally:
        if srv is not None:
            for agent in srv.agents:
                await client.post("/api/v1/agents/me/pause", json={"paused": False},
                                  headers=agent.auth())
                await agent.ws.close()
            await srv.ami.close()
        await client.close()
