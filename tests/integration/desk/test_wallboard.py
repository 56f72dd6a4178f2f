"""The supervisor wallboard in real Chromium, live from the lab Asterisk and the server.

A SIPp caller waits in the sales queue (no agent logged in there): the tile
shows 1 waiting and the wait grows without a reload. agent1 is paused over AMI
with a reason: the wallboard shows it paused with the reason. An inbound SMS
opens a conversation whose first-reply SLA (10 s in this test) turns amber.
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
from cti.wallboard import member_state, sla_state
from pbx.actions import PbxError
from pbx.state import MemberSnapshot
from tests.integration.desk.conftest import PASSWORD
from tests.peers.browser import DeskBrowser

pytestmark = [pytest.mark.timeout(240)]

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


@pytest.mark.integration
async def test_wallboard_live_queue_pause_and_sla(
    tmp_path: Path, lab_pbx: LabPbx, desk_browser: DeskBrowser, sipp_caller: Any,
    phone_factory: Any,
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'wb.sqlite3'}", data_dir=tmp_path,
        secret_key="wallboard-secret", history_flush_interval=0.01, sms_first_reply_sla=10.0,
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
                             caller_name="Caller", hangup_after=30)
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

        # An inbound SMS: ok at first, amber after half the 10 s target, then red.
        conv = await services.inbox.receive("sms", "+79167654321", "<img src=x onerror=alert(1)>",
                                            name="<script>x</script>")
        row = f"#wb-convs tr[data-conversation='{conv.id}']"
        await page.wait_for_selector(f"{row} td.sla")
        assert await page.get_attribute(f"{row} td.sla", "data-sla") == "ok"
        await page.wait_for_selector(f"{row} td.sla[data-sla='amber']", timeout=30_000)
        assert desk_browser.dialogs == []
        shot = await desk_browser.screenshot(page, "wallboard")
        assert shot.exists()
        await page.wait_for_selector(f"{row} td.sla[data-sla='red']", timeout=30_000)

        # Still live, without a reload.
        await page.evaluate("() => { window.__wb_marker = 1; }")
        await link.queue_pause(AGENT, False, "support")
        await page.wait_for_selector(f"{member}:not([data-state='paused'])")
        assert await page.evaluate("() => window.__wb_marker") == 1, "no reload"
        queue = link.queue("sales")
        assert queue is not None and len(queue.waiting) == 1
        await link.hangup(queue.waiting[0].channel)  # the PBX sends the caller a BYE
        await page.wait_for_function(
            "(s) => document.querySelector(s)?.textContent === '0'", arg=waiting)
        result = await caller.wait_async(40)
        assert result.successful_calls == 1, result
        await page.close()  # its socket closes now, not at server shutdown
    finally:
        with contextlib.suppress(PbxError):
            await link.queue_pause(AGENT, False, "support")
        await server.close()


def test_member_and_sla_states() -> None:
    def m(device: str, *, paused: bool = False, in_call: bool = False) -> MemberSnapshot:
        return MemberSnapshot("PJSIP/a", "a", device, paused, "r", in_call, 0)

    assert member_state(m("NOT_INUSE")) == "available"
    assert member_state(m("NOT_INUSE"), wrapup=True) == "wrapup"
    assert member_state(m("INUSE")) == "on_call"
    assert member_state(m("NOT_INUSE", in_call=True)) == "on_call"
    assert member_state(m("RINGING")) == "ringing"
    assert member_state(m("INUSE", paused=True)) == "paused"
    assert member_state(m("UNAVAILABLE", paused=True)) == "logged_out"
    assert sla_state(60, 0, None, 10) == "ok"
    assert sla_state(60, 0, None, 30) == "amber"
    assert sla_state(60, 0, None, 60) == "red"
    assert sla_state(60, 0, 59, 500) == "met"
    assert sla_state(60, 0, 61, 500) == "breached"


async def test_wallboard_api_and_pushes_without_pbx(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'wb.sqlite3'}",
                        data_dir=tmp_path, secret_key="wallboard-secret",
                        history_flush_interval=0.01, sms_first_reply_sla=900.0)
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    services = app[SERVICES]
    base = str(server.make_url("")).rstrip("/")
    try:
        await services.agents.create("agent1", PASSWORD, name="Agent 1")
        await services.agents.create("boss", PASSWORD, name="Boss", role=Role.SUPERVISOR)
        chat = await services.inbox.receive("chat", "visitor@example.org", "hi",
                                            kind="email", name="Visitor")
        sms = await services.inbox.receive("sms", "+79167654321", "hello", name="Пётр")
        async with aiohttp.ClientSession(base) as http:
            async def token(login: str) -> str:
                resp = await http.post("/api/v1/auth/token",
                                       json={"login": login, "password": PASSWORD})
                assert resp.status == 200, await resp.text()
                return str((await resp.json())["token"])

            boss, agent = await token("boss"), await token("agent1")
            resp = await http.get("/api/v1/wallboard")
            assert resp.status == 401
            resp = await http.get("/api/v1/wallboard", headers={"Authorization": f"Bearer {boss}"})
            assert resp.status == 200, await resp.text()
            snap = await resp.json()
            assert snap["queues"] == []
            assert snap["today"]["calls_handled"] == 0 and snap["today"]["texts"] == 2
            by_id = {c["id"]: c for c in snap["conversations"]}
            assert by_id[chat.id]["sla"] == {"target": 60.0, "state": "ok"}
            assert by_id[sms.id]["sla"] == {"target": 900.0, "state": "ok"}
            assert by_id[sms.id]["customer"] == "Пётр" and by_id[sms.id]["owner"] == "Agent 1"

            sup = await http.ws_connect("/api/v1/events",
                                        params={"token": boss, "client": "wallboard"})
            ag = await http.ws_connect("/api/v1/events", params={"token": agent})
            for ws in (sup, ag):
                assert (await ws.receive_json(timeout=10))["type"] == "hello"
            pushed = await sup.receive_json(timeout=10)
            assert pushed["type"] == "wallboard" and "seq" not in pushed
            assert {c["id"] for c in pushed["conversations"]} == {chat.id, sms.id}
            # Nothing changes (waits are rounded to 0.1 s, so they change): the pushes
            # stay at most one a second, and agents never get them.
            started, count = time.monotonic(), 0
            while time.monotonic() - started < 3.0:
                with contextlib.suppress(TimeoutError):
                    msg = await sup.receive_json(timeout=0.5)
                    assert msg["type"] == "wallboard"
                    count += 1
            assert 1 <= count <= 4, count
            with pytest.raises(TimeoutError):
                while True:
                    msg = await ag.receive_json(timeout=0.5)
                    assert msg["type"] != "wallboard", msg
            await sup.close()
            await ag.close()
    finally:
        await server.close()
