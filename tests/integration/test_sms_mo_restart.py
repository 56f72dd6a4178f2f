"""MO parts survive a restart: part 1 of 2 reaches one server process, part 2 the next.

The ESME saves every part of a multipart MO message before it answers the
SMSC (``sms_mo_parts``), so a part the SMSC was told we have is never lost;
the next process reassembles it with the rest and the rows are forgotten.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from cti.app import create_app
from cti.config import BootstrapAdmin, Settings, SmppLink
from cti.keys import SERVICES
from cti.links.sms import sms_links
from cti.services import Services
from cti.sms_outbox import SmsMoPart
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration

ADMIN = ("admin", "admin-password")
CUSTOMER = "+79161230000"
TEXT = "Добрый вечер! Заказ 9001 пришёл без инструкции, пришлите, пожалуйста, ссылку на неё."


async def until(what: str, check: Callable[[], Awaitable[Any]], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return value


async def saved_parts(services: Services) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SmsMoPart)) or 0)


@asynccontextmanager
async def server(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings)
    app.cleanup_ctx.append(sms_links())
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async def bound() -> bool:
            health = await (await client.get("/api/v1/health")).json()
            return bool(health["links"]["smpp:smpp1"]["up"])

        await until("the SMPP link to bind", bound)
        yield client
    finally:
        await client.close()


async def test_a_part_received_before_a_restart_completes_after_it(
    db_url: str, tmp_path: Path, smsc: Smsc
) -> None:
    settings = Settings(
        db_url=db_url, data_dir=tmp_path, secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN), history_flush_interval=0.01,
        smpp=(SmppLink("smpp1", "127.0.0.1", smsc.smpp_port, "cti", "secret"),),
    )
    async with server(settings) as first:
        services = first.server.app[SERVICES]
        sent = await smsc.acall("POST", "/mo", {"source": CUSTOMER, "destination": "CTI",
                                                "text": TEXT, "order": [1], "ref": 77})
        assert sent["sent"] == 1
        assert await until("part 1 to be saved", lambda: saved_parts(services)) == 1

    async with server(settings) as second:
        services = second.server.app[SERVICES]
        resp = await second.post("/api/v1/auth/token",
                                 json={"login": ADMIN[0], "password": ADMIN[1]})
        admin = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        resp = await second.post("/api/v1/agents", headers=admin, json={
            "login": "olga", "password": "agent-password", "name": "Ольга"})
        assert resp.status == 201, await resp.text()
        resp = await second.post("/api/v1/auth/token",
                                 json={"login": "olga", "password": "agent-password"})
        ws = await second.ws_connect("/api/v1/events",
                                     params={"token": (await resp.json())["token"]})
        sent = await smsc.acall("POST", "/mo", {"source": CUSTOMER, "destination": "CTI",
                                                "text": TEXT, "order": [2], "ref": 77})
        assert sent["sent"] == 1
        deadline = time.monotonic() + 30
        while True:
            msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            pop = json.loads(msg.data)
            if pop.get("type") == "screen_pop":
                break
        assert pop["channel"] == "sms" and pop["conversation"]["contact"] == CUSTOMER
        texts = [e["payload"].get("text") for e in pop["history"]]
        assert TEXT in texts, texts

        async def forgotten() -> bool:
            return await saved_parts(services) == 0

        await until("the saved part to be forgotten", forgotten)
        await ws.close()
