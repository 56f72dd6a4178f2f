"""The supervisor wallboard in real Chromium, live from the lab Asterisk and the server.

A SIPp caller waits in the sales queue (no agent logged in there): the tile
shows 1 waiting and the wait grows without a reload. agent1 is paused over AMI
with a reason: the wallboard shows it paused with the reason. An inbound SMS
opens a conversation whose first-reply SLA (6 s in this test) turns amber.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cti.auth import Role
from cti.config import AmiServer, Settings
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.pbx import PBX_LINKS
from cti.serve import build_app
from pbx.actions import PbxError
from tests.integration.desk.conftest import PASSWORD
from tests.peers.browser import DeskBrowser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUT = 40.0
AGENT = "PJSIP/agent1"


async def until(what: str, check: Callable[[], bool], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def wait_seconds(text: str) -> int:
    minutes, _, seconds = text.partition(":")
    return int(minutes) * 60 + int(seconds)


async def test_wallboard_live_queue_pause_and_sla(
    tmp_path: Path, lab_pbx: LabPbx, desk_browser: DeskBrowser, sipp_caller: Any,
    phone_factory: Any,
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'wb.sqlite3'}", data_dir=tmp_path,
        secret_key="wallboard-secret", history_flush_interval=0.01, sms_first_reply_sla=6.0,
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
    )
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    services = app[SERVICES]
    link = app[PBX_LINKS]["lab"]
    base = str(server.make_url("")).rstrip("/")
    try:
        await services.agents.create("agent1", PASSWORD, name="Агент <b>1</b>", endpoint=AGENT,
                                     queues=["support"])
        await services.agents.create("boss", PASSWORD, name="Boss", role=Role.SUPERVISOR)
        await link.wait_up(TIMEOUT)
        await link.queue_pause(AGENT, False, "support")
        sales = lab_pbx.queues[1]
        assert sales.name == "sales" and AGENT.removeprefix("PJSIP/") not in sales.members

        await phone_factory("agent1")  # logged in: available, then paused

        # Agents are refused the wallboard.
        async with aiohttp.ClientSession(base) as http:
            resp = await http.post("/api/v1/auth/token",
                                   json={"login": "agent1", "password": PASSWORD})
            agent_token = (await resp.json())["token"]
            resp = await http.get("/api/v1/wallboard",
                                  headers={"Authorization": f"Bearer {agent_token}"})
            assert resp.status == 403, await resp.text()

        page = await desk_browser.new_page()
        await page.goto(f"{base}/wallboard/")
        await page.fill("#wb-user", "boss")
        await page.fill("#wb-pass", PASSWORD)
        await page.click("#wb-submit")
        await page.wait_for_selector("#wb-conn.conn-up")
        assert not await page.is_visible("#wb-login")
        await page.wait_for_selector("[data-queue='sales']")
        await page.wait_for_selector(
            f"[data-queue='support'] [data-member='{AGENT}'][data-state='available']")

        caller = sipp_caller(number=sales.number, caller_number="+79161234567",
                             caller_name="Caller", hangup_after=20)
        waiting = "[data-queue='sales'] [data-k='waiting'] .value"
        longest = "[data-queue='sales'] [data-k='longest_wait'] .value"
        await page.wait_for_function(
            "(s) => document.querySelector(s)?.textContent === '1'", arg=waiting)
        first = wait_seconds(await page.text_content(longest) or "")
        await page.wait_for_function(
            "([s, n]) => { const t = document.querySelector(s)?.textContent || '0:00';"
            " const [m, x] = t.split(':'); return Number(m) * 60 + Number(x) >= n; }",
            arg=[longest, first + 2])

        # A pause made on the PBX side shows on the wallboard with its reason.
        await link.queue_pause(AGENT, True, "support", "Обед")
        member = f"[data-queue='support'] [data-member='{AGENT}']"
        await page.wait_for_selector(f"{member}[data-state='paused']")
        assert await page.text_content(f"{member} .reason") == "Paused: Обед"
        assert await page.text_content(f"{member} .name") == "Агент <b>1</b>"

        # An inbound SMS: ok at first, amber after half the 6 s target.
        conv = await services.inbox.receive("sms", "+79167654321", "<img src=x onerror=alert(1)>",
                                            name="<script>x</script>")
        row = f"#wb-convs tr[data-conversation='{conv.id}']"
        await page.wait_for_selector(f"{row} td.sla")
        assert await page.get_attribute(f"{row} td.sla", "data-sla") == "ok"
        await page.wait_for_selector(f"{row} td.sla[data-sla='amber']", timeout=15_000)
        assert desk_browser.dialogs == []
        shot = await desk_browser.screenshot(page, "wallboard")
        assert shot.exists()
        await page.wait_for_selector(f"{row} td.sla[data-sla='red']", timeout=15_000)

        # Still live, without a reload.
        await page.evaluate("() => { window.__wb_marker = 1; }")
        await link.queue_pause(AGENT, False, "support")
        await page.wait_for_selector(f"{member}:not([data-state='paused'])")
        assert await page.evaluate("() => window.__wb_marker") == 1, "no reload"
        await page.wait_for_function(  # the caller hangs up after 20 s
            "(s) => document.querySelector(s)?.textContent === '0'", arg=waiting,
            timeout=40_000)
        result = await caller.wait_async(40)
        assert result.successful_calls == 1, result
    finally:
        with contextlib.suppress(PbxError):
            await link.queue_pause(AGENT, False, "support")
        await server.close()
