"""The real CTI server (SQLite file) with the desk pages, on a loopback port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page

from cti.app import create_app
from cti.config import Settings
from cti.keys import SERVICES
from cti.models import WrapUpCode
from cti.services import Services
from cti.web import setup_web

PASSWORD = "desk-password"
WAIT = 20.0


@dataclass
class Desk:
    base_url: str
    services: Services

    async def login(self, page: Page, login: str) -> None:
        await page.goto(f"{self.base_url}/desk/")
        await page.fill("#login-user", login)
        await page.fill("#login-pass", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_selector("#conn.conn-up")


async def wait_for(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {WAIT}s waiting for {what}")


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'desk.sqlite3'}",
        data_dir=tmp_path,
        secret_key="desk-test-secret",
        history_flush_interval=0.01,
    )
    app = create_app(settings)
    setup_web(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    services = app[SERVICES]
    try:
        for n in (1, 2):
            await services.agents.create(
                f"agent{n}",
                PASSWORD,
                name=f"Agent {n}",
                endpoint=f"PJSIP/agent{n}",
                queues=["support"],
                skills=["ru"],
            )
        async with services.sessions() as session, session.begin():
            session.add(WrapUpCode(code="resolved", label="Resolved"))
        yield Desk(str(server.make_url("")).rstrip("/"), services)
    finally:
        await server.close()
