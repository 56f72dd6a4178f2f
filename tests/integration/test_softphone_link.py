"""The project's softphone linked to the server (issue #7 part 5).

First the phone API alone (no PBX): 409 with no softphone linked, 422 on bad
commands, 202 delivering to the softphone's socket only. Then the whole server
on the lab PBX with agent1's pjsua2 phone linked through ``SoftphoneLink``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.config import BootstrapAdmin, Settings
from cti.serve import build_app

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
