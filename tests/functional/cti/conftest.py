"""The CTI app on a real database (SQLite file and PostgreSQL), served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.auth import Role
from cti.config import BootstrapAdmin, Settings
from cti.keys import SERVICES
from cti.services import Services

ADMIN = ("admin", "admin-password")
PASSWORD = "agent-password"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        db_url=db_url,
        data_dir=tmp_path,
        secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN),
        history_flush_interval=0.01,
        max_body_bytes=64 * 1024,
        replay_buffer=50,
        socket_queue=20,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    svc = Services(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@dataclass
class Api:
    client: TestClient[Any, Any]
    services: Services

    async def token(self, login: str, password: str = PASSWORD) -> str:
        resp = await self.client.post(
            "/api/v1/auth/token", json={"login": login, "password": password}
        )
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["token"])

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    admin_token: str = ""

    async def agent(self, login: str, endpoint: str | None = None, **extra: Any) -> str:
        if not self.admin_token:
            self.admin_token = await self.token(*ADMIN)
        admin = self.admin_token
        body = {"login": login, "password": PASSWORD, "name": login.title(), **extra}
        if endpoint:
            body["endpoint"] = endpoint
        resp = await self.client.post("/api/v1/agents", json=body, headers=self.auth(admin))
        assert resp.status == 201, await resp.text()
        return await self.token(login)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, app[SERVICES])
    finally:
        await client.close()


async def make_agent(services: Services, login: str, **kw: Any) -> int:
    agent = await services.agents.create(login, PASSWORD, name=login, role=Role.AGENT, **kw)
    return agent.id
