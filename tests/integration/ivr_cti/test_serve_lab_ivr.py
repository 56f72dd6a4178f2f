"""``cti serve --lab`` with no CTI_AGI_LISTEN: the IVR listens on a free loopback
port and the lab dialplan it starts calls that port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.config import Settings
from cti.links.ivr import IVR_SERVER
from cti.links.lab import LAB_AGI_LISTEN, LAB_PBX
from cti.serve import build_app
from tests.integration.ivr.ami import AmiProbe
from tests.integration.ivr_cti.support import until

pytestmark = pytest.mark.integration


async def test_lab_dialplan_calls_the_served_ivr(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                        data_dir=tmp_path / "data", secret_key="test-secret")
    assert settings.agi_listen is None
    app = build_app(settings, lab=True)
    listen = app[LAB_AGI_LISTEN]
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    ami = AmiProbe()
    try:
        lab = app[LAB_PBX][0]
        server = app[IVR_SERVER][0]
        assert (lab.agi_host, lab.agi_port) == (listen.host, listen.port) == server.address

        async def ivr_up() -> bool:
            links = (await (await client.get("/api/v1/health")).json())["links"]
            return bool(links.get("ivr", {}).get("up")) and bool(links["pbx:lab"]["up"])

        await until("the ivr and pbx:lab links", ivr_up)
        await ami.connect(lab.ami_url)
        response = await ami.action({
            "Action": "Originate", "Channel": "Local/100@from-trunk", "Application": "Wait",
            "Data": "30", "CallerID": "Caller <+79161234567>", "Async": "true",
        })
        assert response.get("Response") == "Success", response

        async def session_ran() -> bool:
            return server.counters.accepted >= 1 and any(
                s.environment.script == "inbound" for s in server.sessions())

        await until("an AGI session of the lab dialplan", session_ran)
        for session in server.sessions():
            await ami.action({"Action": "Hangup", "Channel": session.environment.channel})
    finally:
        await ami.close()
        await client.close()
