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

from cti.auth import Role
from cti.config import Settings
from cti.desk_api import seed_desk
from cti.keys import SERVICES
from cti.serve import build_app
from cti.services import Services

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
    app = build_app(settings)  # the whole server, as `cti serve` composes it
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
        await services.agents.create("boss", PASSWORD, name="Boss", role=Role.SUPERVISOR)
        await seed_desk(services)
        yield Desk(str(server.make_url("")).rstrip("/"), services)
    finally:
        await server.close()


class CuttableLink:
    """A loopback TCP relay in front of the server that the test can cut.

    Cutting stops listening and closes every relayed connection, as a network
    drop would; ``restore()`` listens again on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()


@pytest.fixture
async def cuttable(desk: Desk) -> AsyncIterator[tuple[Desk, CuttableLink]]:
    """The desk server reached through a relay the test can cut."""
    port = int(desk.base_url.rsplit(":", 1)[1])
    link = CuttableLink(port)
    await link.start()
    try:
        yield Desk(f"http://127.0.0.1:{link.port}", desk.services), link
    finally:
        await link.close()
