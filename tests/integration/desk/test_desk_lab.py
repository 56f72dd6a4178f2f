"""The desk in real Chromium driving the lab Asterisk through the whole server.

A SIPp caller from a known customer pops the card while agent1's pjsua2 phone
rings; the desk hangs the call up in Asterisk and wraps it up; click-to-dial
from the card rings agent1's phone; a pause made in the desk shows in
Asterisk's QueueStatus, and a pause made over AMI shows in the desk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from cti.config import AmiServer, Settings
from cti.customers import ContactInput
from cti.desk_api import seed_desk
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.pbx import PBX_LINKS
from cti.serve import build_app
from cti.services import Services
from cti.softphone.link import DeskLink, RecordingNotifier
from pbx import actions as act
from pbx.actions import PbxError
from pbx.link import AmiLink
from tests.integration.desk.conftest import PASSWORD, Desk
from tests.peers.browser import DeskBrowser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUT = 40.0
NUMBER = "+79161234567"
NAME = "Иван Петров"
AGENT = "PJSIP/agent1"


@dataclass
class LabDesk(Desk):
    link: AmiLink

    def member(self, queue: str = "support") -> Any:
        q = self.link.queue(queue)
        return next((m for m in q.members if m.interface == AGENT), None) if q else None


async def until(what: str, check: Callable[[], bool], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def queue_status(link: AmiLink, interface: str) -> tuple[str | None, str | None]:
    """(Paused, PausedReason) from a fresh AMI QueueStatus, not the tracker's view."""
    action: act.Action = {"Action": "QueueStatus", "Queue": "support", "Member": interface}
    members = [
        m for m in await link._list(action, 10.0)  # the list-action reader
        if m.event == "QueueMember" and m.get("Location", m.get("Interface")) == interface
    ]
    assert len(members) == 1, members
    return members[0].get("Paused"), members[0].get("PausedReason")


@pytest.fixture
async def lab_desk(tmp_path: Path, lab_pbx: LabPbx) -> AsyncIterator[LabDesk]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'desk.sqlite3'}",
        data_dir=tmp_path,
        secret_key="desk-lab-secret",
        history_flush_interval=0.01,
        ami=(AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user,
                       lab_pbx.ami_secret),),
    )
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    services: Services = app[SERVICES]
    link = app[PBX_LINKS]["lab"]
    try:
        await services.agents.create("agent1", PASSWORD, name="Agent 1", endpoint=AGENT,
                                     queues=["support"])
        await services.agents.create("agent2", PASSWORD, name="Agent 2",
                                     endpoint="PJSIP/agent2", queues=["support"])
        await seed_desk(services)
        await link.wait_up(TIMEOUT)
        await link.queue_pause(AGENT, False, "support")  # whatever an earlier test left
        yield LabDesk(str(server.make_url("")).rstrip("/"), services, link)
    finally:
        with contextlib.suppress(PbxError):
            await link.queue_pause(AGENT, False, "support")
        await server.close()


async def test_call_pop_hangup_wrapup_dial_and_pause_sync(
    lab_desk: LabDesk, desk_browser: DeskBrowser, phone_factory: Any, sipp_caller: Any
) -> None:
    desk = lab_desk
    customer = await desk.services.customers.create(
        NAME, [ContactInput("phone", "8 916 123-45-67")]
    )
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    await page.wait_for_function("() => document.body.dataset.status === 'available'")
    phone = await phone_factory("agent1")
    await until("agent1 free in the support queue", lambda: (m := desk.member()) is not None
                and m.device_state == "NOT_INUSE" and not m.paused)

    # The pop comes while the phone only rings.
    caller = sipp_caller(number="100", caller_number=NUMBER, caller_name="IVAN", hangup_after=60)
    await page.wait_for_function(
        "(n) => document.getElementById('card-name')?.textContent === n", arg=NAME
    )
    assert phone.state in ("idle", "ringing"), phone.state
    assert await page.is_visible("#call-bar")
    await phone.wait_for_incoming(20)
    await phone.answer()
    await phone.wait_state("connected", 15)
    await page.wait_for_function(
        "() => document.getElementById('call-state')?.textContent === 'answered'"
    )
    await desk_browser.screenshot(page, "desk-call")

    # Hang up from the desk: the call ends in Asterisk, the desk goes to wrap-up.
    await page.click("#call-hangup")
    await phone.wait_state("disconnected", 15)
    await until("the call gone from Asterisk", lambda: not desk.link.calls())
    result = await caller.wait_async(30)
    assert result.successful_calls == 1, result
    await page.wait_for_selector("#call-wrapup:not([hidden])")
    assert await page.get_attribute("body", "data-status") == "wrapup"
    await page.select_option("#call-wrapup-code", "resolved")
    await page.click("#call-wrapup-done")
    await page.wait_for_function("() => document.body.dataset.status === 'available'")
    conv_id = int(await page.get_attribute("#call-wrapup", "data-conversation") or "0")
    closed = await desk.services.conversations.get(conv_id)
    assert closed.status == "closed" and closed.wrap_up_code == "resolved"
    assert closed.customer_id == customer.id

    # Click-to-dial from the card rings agent1's phone first.
    await until("agent1 free again", lambda: (m := desk.member()) is not None
                and m.device_state == "NOT_INUSE")
    await page.click(f"#card button.dial[data-number='{NUMBER}']")
    await phone.wait_for_incoming(20)
    assert "Calling" in (await page.text_content("#notice") or "")
    await phone.answer()
    await page.wait_for_function(
        "() => /Dialling|failed/.test(document.getElementById('notice').textContent)"
    )
    with contextlib.suppress(Exception):
        await phone.hangup()
    await until("the dialled call gone", lambda: not desk.link.calls())

    # Pause in the desk -> Asterisk's QueueStatus shows the member paused with the reason.
    await page.select_option("#status-select", "paused")
    await page.wait_for_function("() => document.body.dataset.status === 'paused:break'")
    assert await queue_status(desk.link, AGENT) == ("1", "break")
    await page.select_option("#pause-reason", "lunch")  # a new reason is sent at once
    await page.wait_for_function("() => document.body.dataset.status === 'paused:lunch'")
    assert await queue_status(desk.link, AGENT) == ("1", "lunch")
    await page.select_option("#status-select", "available")
    await page.wait_for_function("() => document.body.dataset.status === 'available'")
    assert (await queue_status(desk.link, AGENT))[0] == "0"

    # Pause over AMI (as the phone's feature code or another tool would) -> the desk shows it.
    await desk.link.queue_pause(AGENT, True, "support", "обед")
    await page.wait_for_function("() => document.body.dataset.status === 'paused:обед'")
    assert "обед" in (await page.text_content("#status-note") or "")
    assert await page.input_value("#status-select") == "paused"
    await desk.link.queue_pause(AGENT, False, "support")
    await page.wait_for_function("() => document.body.dataset.status === 'available'")
    assert desk_browser.dialogs == []


@contextlib.asynccontextmanager
async def agent1_on_a_queue_call(
    desk: LabDesk, desk_browser: DeskBrowser, phone_factory: Any, sipp_caller: Any
) -> AsyncIterator[tuple[Any, Any, Any, Any, Any]]:
    """Both agents' desks open, agent2 paused, agent1 answering a SIPp queue call from
    the known customer: (page1, page2, phone1, phone2, caller)."""
    await desk.services.customers.create(NAME, [ContactInput("phone", NUMBER)])
    page1 = await desk_browser.new_page()
    await desk.login(page1, "agent1")
    page2 = await desk_browser.new_page()
    await desk.login(page2, "agent2")
    # agent2 is paused in the queue: only agent1 gets the queue call.
    await desk.link.queue_pause("PJSIP/agent2", True, "support", "transfer test")
    try:
        phone1 = await phone_factory("agent1")
        phone2 = await phone_factory("agent2")
        await until("agent1 free in the support queue", lambda: (m := desk.member()) is not None
                    and m.device_state == "NOT_INUSE" and not m.paused)
        caller = sipp_caller(number="100", caller_number=NUMBER, caller_name="IVAN",
                             hangup_after=60)
        await phone1.wait_for_incoming(20)
        await phone1.answer()
        yield page1, page2, phone1, phone2, caller
    finally:
        with contextlib.suppress(PbxError):
            await desk.link.queue_pause("PJSIP/agent2", False, "support")


async def test_blind_transfer_to_a_colleague_takes_the_card_along(
    lab_desk: LabDesk, desk_browser: DeskBrowser, phone_factory: Any, sipp_caller: Any,
    lab_pbx: LabPbx,
) -> None:
    async with agent1_on_a_queue_call(lab_desk, desk_browser, phone_factory,
                                      sipp_caller) as (page1, page2, phone1, phone2, caller):
        await page1.wait_for_function(
            "() => document.getElementById('call-state')?.textContent === 'answered'"
        )
        assert await page2.is_visible("#pop-empty")

        await page1.fill("#xfer-target", lab_pbx.agent_exten("agent2"))
        await page1.click("#xfer-blind")
        await phone1.wait_state("disconnected", 15)
        await phone2.wait_for_incoming(20)
        await phone2.answer()
        await phone2.wait_state("connected", 15)
        # The card follows the call to agent2's desk.
        await page2.wait_for_function(
            "(n) => document.getElementById('card-name')?.textContent === n", arg=NAME
        )
        assert "Transferred call" in (await page2.text_content("#interaction") or "")
        assert await page2.text_content("#call-state") == "answered"
        assert "transferred" in (await page1.text_content("#call-state") or "")
        await desk_browser.screenshot(page2, "desk-transferred-call")

        # agent2 hangs up from the desk and wraps up.
        await page2.click("#call-hangup")
        await phone2.wait_state("disconnected", 15)
        await caller.wait_async(30)
        await page2.wait_for_selector("#call-wrapup:not([hidden])")
        await page2.click("#call-wrapup-done")
        await page2.wait_for_function("() => document.body.dataset.status !== 'wrapup'")


async def test_attended_transfer_from_the_desk(
    lab_desk: LabDesk, desk_browser: DeskBrowser, phone_factory: Any, sipp_caller: Any,
    lab_pbx: LabPbx,
) -> None:
    async with agent1_on_a_queue_call(lab_desk, desk_browser, phone_factory,
                                      sipp_caller) as (page1, page2, phone1, phone2, caller):
        # Atxfer works because the dialplan's Queue() has option t (agent may transfer).
        await page1.wait_for_function(
            "() => document.getElementById('call-state')?.textContent === 'answered'"
        )
        await page1.fill("#xfer-target", lab_pbx.agent_exten("agent2"))
        await page1.click("#xfer-attended")
        await page1.wait_for_function(
            "() => document.getElementById('notice').textContent.startsWith('Consulting')"
        )
        await phone2.wait_for_incoming(20)
        await phone2.answer()
        await phone2.wait_state("connected", 15)
        assert phone1.state == "connected"  # agent1 talks to agent2, the caller waits
        await phone1.hangup()  # completes the transfer
        await page2.wait_for_function(
            "(n) => document.getElementById('card-name')?.textContent === n", arg=NAME
        )
        assert "Transferred call" in (await page2.text_content("#interaction") or "")
        assert phone2.state == "connected"
        await page2.click("#call-hangup")
        await phone2.wait_state("disconnected", 15)
        result = await caller.wait_async(30)
        assert result.successful_calls == 1, result


async def test_desk_answers_through_the_linked_softphone(
    lab_desk: LabDesk, desk_browser: DeskBrowser, phone_factory: Any, sipp_caller: Any
) -> None:
    desk = lab_desk
    await desk.services.customers.create(NAME, [ContactInput("phone", NUMBER)])
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    await page.wait_for_function("() => document.body.dataset.softphones === '0'")
    phone = await phone_factory("agent1")
    async with DeskLink(desk.base_url, "agent1", PASSWORD, phone, RecordingNotifier()) as link:
        await asyncio.wait_for(link.linked.wait(), TIMEOUT)
        await page.wait_for_function("() => document.body.dataset.softphones === '1'")
        await until("agent1 free in the support queue", lambda: (m := desk.member()) is not None
                    and m.device_state == "NOT_INUSE" and not m.paused)
        caller = sipp_caller(number="100", caller_number=NUMBER, caller_name="IVAN",
                             hangup_after=60)
        await page.wait_for_function(
            "(n) => document.getElementById('card-name')?.textContent === n", arg=NAME
        )
        assert phone.state in ("idle", "ringing"), phone.state  # the pop came first
        await phone.wait_state("ringing", TIMEOUT)
        await page.click("#call-answer")
        await phone.wait_state("connected", 15)
        await page.wait_for_function(
            "() => document.getElementById('call-state')?.textContent === 'answered'"
        )
        await page.click("#call-hold")
        await page.wait_for_function(
            "() => document.getElementById('softphone').textContent === 'softphone: held'"
        )
        await page.click("#call-unhold")
        await page.wait_for_function(
            "() => document.getElementById('softphone').textContent === 'softphone: connected'"
        )
        # DTMF typed in the desk is played by the softphone (the digits reaching the
        # far end are checked in tests/integration/test_softphone_link.py).
        await page.fill("#dtmf", "15#")
        await page.click("#dtmf-send")
        await until("the softphone to play the DTMF", lambda: ("dtmf", None) in [
            (a, e) for _, a, e in link.executed])
        assert [a for _, a, _ in link.executed] == ["answer", "hold", "unhold", "dtmf"]
        await asyncio.sleep(1.0)  # some talk time on the record
        await page.click("#call-hangup")
        await phone.wait_state("disconnected", 15)
        result = await caller.wait_async(30)
        assert result.successful_calls == 1, result
        await page.wait_for_selector("#call-wrapup:not([hidden])")
        await page.click("#call-wrapup-done")
        ended = page.locator("#timeline li[data-kind=call_ended]")
        await ended.wait_for()
        assert "talk:" in (await ended.text_content() or "")
        kinds = await page.eval_on_selector_all(
            "#timeline li", "ls => ls.map(l => l.dataset.kind)"
        )
        assert {"call_offered", "call_answered", "call_held", "call_ended"} <= set(kinds), kinds
        await desk_browser.screenshot(page, "desk-softphone-call")
