"""The agent desk in real Chromium against the real CTI server."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Page
from sqlalchemy import update

from cti.customers import ContactInput
from cti.history import HistoryEntry, timeline
from cti.models import Conversation
from pbx.changes import CallOffered, CallQueued
from sms_gateway.encoding import count_segments
from tests.integration.desk.conftest import CuttableLink, Desk, wait_for
from tests.peers.browser import DeskBrowser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = "<script>alert('x')</script>"
IMG = "<img src=x onerror=alert('y')>"


async def offer_call(desk: Desk, caller: str, name: str, call_id: str, agent: str) -> None:
    t = time.time()
    await desk.services.calls.handle(CallQueued("pbx1", call_id, "support", 1, caller, name, t))
    await desk.services.calls.handle(
        CallOffered("pbx1", call_id, "support", f"PJSIP/{agent}", caller, name, "100", 4.0, t + 4)
    )


async def test_screen_pop_shows_card_interaction_and_scrolling_timeline(
    desk: Desk, desk_browser: DeskBrowser
) -> None:
    svc = desk.services
    customer = await svc.customers.create("Иван Петров", [ContactInput("phone", "+79161234567")])
    for n in range(45):
        await svc.history.add(
            HistoryEntry(
                customer_id=customer.id,
                conversation_id=None,
                kind="note",
                channel="sms",
                payload={"text": f"old note {n:02d}"},
            )
        )
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    await offer_call(desk, "+79161234567", "IVAN", "pbx1:1700000000.1", "agent1")

    await page.wait_for_selector("#card-name")
    assert await page.text_content("#card-name") == "Иван Петров"
    interaction = await page.text_content("#interaction") or ""
    for part in ("Incoming call", "support", "100", "+79161234567", "0:04", "voice"):
        assert part in interaction, (part, interaction)
    # Newest first: the call events come before the old notes.
    kinds = await page.eval_on_selector_all("#timeline li", "ls => ls.map(l => l.dataset.kind)")
    assert kinds[0].startswith("call_"), kinds
    await desk_browser.screenshot(page, "desk-pop")

    # Infinite scroll: scrolling to the end loads every older note, once each.
    async def all_loaded() -> bool:
        await page.eval_on_selector("#timeline", "t => { t.scrollTop = t.scrollHeight; }")
        return "end of history" in (await page.text_content("#timeline-more") or "")

    await wait_for(all_loaded, "the whole timeline")
    notes = await page.eval_on_selector_all(
        "#timeline li[data-kind=note] .tl-text", "ls => ls.map(l => l.textContent)"
    )
    assert notes == [f"old note {n:02d}" for n in reversed(range(45))]


async def test_queued_text_is_taken_replied_and_closed(
    desk: Desk, desk_browser: DeskBrowser
) -> None:
    svc = desk.services
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    # Skill "fr": no agent has it, so the conversation waits in the queue.
    conv = await svc.inbox.receive("sms", "+79035550101", "Здравствуйте, помогите", skill="fr")
    item = page.locator(f"#queue-list li[data-id='{conv.id}']")
    await item.wait_for()
    await item.locator("button.take").click()
    await page.wait_for_selector(f"#tabs .tab[data-id='{conv.id}']")
    await page.wait_for_selector("#messages li.msg-in")
    assert await page.text_content("#messages li.msg-in") is not None
    assert "Здравствуйте, помогите" in (await page.text_content("#messages") or "")
    assert "You took" in (await page.text_content("#notice") or "")
    # Taking a conversation shows its customer beside it.
    await page.wait_for_selector("#card .unknown")
    assert "+79035550101" in (await page.text_content("#card") or "")
    assert await page.get_attribute("#sla", "data-state") in ("green", "amber")

    reply = "Добрый день! Чем помочь?"
    await page.fill("#reply", reply)
    expected = count_segments(reply)
    assert await page.text_content("#segments") == (
        f"UCS-2: {expected.parts} SMS, {expected.remaining_in_part} left in this part"
    )
    await page.click("#send")
    await page.wait_for_selector("#messages li.msg-out")
    assert await page.get_attribute("#sla", "data-state") == "done"

    async def stored() -> bool:
        events, _ = await timeline(svc.sessions, conv.customer_id, limit=20)
        return any(e.kind == "message_out" and e.payload["text"] == reply for e in events)

    await wait_for(stored, "the reply in the history")

    # A second message lands in the open tab.
    await svc.inbox.receive("sms", "+79035550101", "Спасибо")
    await page.wait_for_function(
        "() => document.querySelectorAll('#messages li.msg-in').length === 2"
    )
    assert "Спасибо" in (await page.text_content("#messages li.msg-in >> nth=1") or "")
    # The customer's timeline beside the conversation follows live, newest first.
    top = await page.eval_on_selector_all(
        "#timeline li .tl-text", "ls => ls.slice(0, 2).map(l => l.textContent)"
    )
    assert top == ["Спасибо", reply], top
    await desk_browser.screenshot(page, "desk-conversation")

    await page.fill("#wrapup", "resolved")
    await page.click("#close")
    await page.wait_for_function(
        "() => document.getElementById('notice').textContent.includes('closed')"
    )
    closed = await svc.conversations.get(conv.id)
    assert closed.status == "closed" and closed.wrap_up_code == "resolved"


async def test_two_desks_race_for_one_conversation(desk: Desk, desk_browser: DeskBrowser) -> None:
    # Queued before the desks start: each shows it from its first list load.
    conv = await desk.services.inbox.receive("chat", "web-visitor-77", "hello?", skill="fr")
    pages: dict[str, Page] = {}
    for login in ("agent1", "agent2"):
        pages[login] = await desk_browser.new_page()
        # No periodic list refresh may remove the button between the two clicks.
        await pages[login].add_init_script("localStorage.setItem('cti.refresh.s', '3600')")
        await desk.login(pages[login], login)
    buttons = [
        p.locator(f"#queue-list li[data-id='{conv.id}'] button.take") for p in pages.values()
    ]
    for button in buttons:
        await button.wait_for()
    await asyncio.gather(*(button.click() for button in buttons))

    async def both_answered() -> bool:
        notes = [await p.text_content("#notice") or "" for p in pages.values()]
        return all(n for n in notes)

    await wait_for(both_answered, "both desks to show the outcome")
    owner = await desk.services.conversations.get(conv.id)
    winner = await desk.services.conversations.owner_login(owner)
    assert winner in pages
    loser = "agent2" if winner == "agent1" else "agent1"
    assert await pages[winner].text_content("#notice") == f"You took conversation #{conv.id}"
    assert await pages[loser].text_content("#notice") == (
        f"Conversation #{conv.id} is already taken by {winner}"
    )
    await desk_browser.screenshot(pages[loser], "desk-race-loser")


async def test_customer_markup_renders_as_text(desk: Desk, desk_browser: DeskBrowser) -> None:
    svc = desk.services
    name = f"{SCRIPT} {IMG}"
    await svc.customers.create(name, [ContactInput("phone", "+79035550199")])
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    await offer_call(desk, "+79035550199", IMG, "pbx1:1700000000.9", "agent1")
    await page.wait_for_selector("#card-name")
    assert await page.text_content("#card-name") == name
    assert IMG in (await page.text_content("#interaction") or "")

    await svc.customers.create(IMG, [ContactInput("phone", "+79035550198")])
    conv = await svc.inbox.receive("sms", "+79035550198", f"hi {SCRIPT} {IMG}")
    assert conv.owner_id is not None  # given to agent1 (the only agent with free capacity)
    await page.wait_for_selector(f"#tabs .tab[data-id='{conv.id}']")
    await page.wait_for_function(
        "(name) => document.getElementById('card-name')?.textContent === name", arg=IMG
    )
    await page.wait_for_function(
        "() => document.getElementById('timeline-more').textContent === 'end of history'"
    )
    # The pop's history (partly still in the write batch) and the stored page
    # overlap: each event is shown once.
    kinds = await page.eval_on_selector_all("#timeline li", "ls => ls.map(l => l.dataset.kind)")
    assert kinds.count("message_in") == 1 and kinds.count("assigned") == 1, kinds
    await page.click(f"#tabs .tab[data-id='{conv.id}']")
    await page.wait_for_selector("#messages li.msg-in")
    assert await page.text_content("#messages li.msg-in >> nth=0") is not None
    assert f"hi {SCRIPT} {IMG}" in (await page.text_content("#messages") or "")
    assert await page.locator("#desk-view img, #desk-view script").count() == 0

    await asyncio.sleep(0.5)  # give an injected handler the chance to fire
    assert desk_browser.dialogs == []
    await desk_browser.screenshot(page, "desk-xss")


async def test_reconnect_resumes_from_last_seq(desk: Desk, desk_browser: DeskBrowser) -> None:
    svc = desk.services
    await svc.customers.create("Анна Смирнова", [ContactInput("phone", "+79035550101")])
    await svc.customers.create("John Smith", [ContactInput("phone", "+442079460123")])
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    await offer_call(desk, "+79035550101", "ANNA", "pbx1:1700000001.1", "agent1")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'Анна Смирнова'"
    )
    seen = int(await page.get_attribute("body", "data-last-seq") or "0")
    assert seen > 0

    # Leave the page (the socket closes), miss a pop, come back: it is replayed.
    await page.goto("about:blank")
    await offer_call(desk, "+442079460123", "JOHN", "pbx1:1700000001.2", "agent1")
    await page.goto(f"{desk.base_url}/desk/")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'John Smith'"
    )
    # The fresh page asked for the events after the last seq it had seen, and got
    # exactly one pop (John's), not a replay of Anna's.
    assert await page.get_attribute("body", "data-resumed-from") == str(seen)
    assert await page.get_attribute("body", "data-pops") == "1"
    resumed = int(await page.get_attribute("body", "data-last-seq") or "0")
    assert resumed > seen
    assert await page.is_visible("#desk-view")


async def test_segment_counter_matches_python(desk: Desk, desk_browser: DeskBrowser) -> None:
    page = await desk_browser.new_page()
    await page.goto(f"{desk.base_url}/desk/")
    samples = [
        "",
        "Hello",
        "a" * 160,
        "a" * 161,
        "a" * 306,
        "a" * 307,
        "€" * 80,
        "€" * 81,
        "a" * 152 + "€" + "b" * 10,
        "Привет",
        "я" * 70,
        "я" * 71,
        "я" * 134,
        "я" * 135,
        "😀" * 35,
        "😀" * 36,
        "a" * 66 + "😀" + "b",
        "{[~]}|\\^ and \n\r newlines",
        "ÄÖÑÜ§¿äöñüà@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ",
        "`backtick is not GSM`",
        "\x1b escape char",
    ]
    got = await page.evaluate(
        """async (texts) => {
            const m = await import('/desk/static/sms.js');
            return texts.map((t) => m.countSegments(t));
        }""",
        samples,
    )
    for text, js in zip(samples, got, strict=True):
        py = count_segments(text)
        assert (
            js["coding"],
            js["parts"],
            js["units"],
            js["unitsPerPart"],
            js["remainingInPart"],
        ) == (
            py.coding,
            py.parts,
            py.units,
            py.units_per_part,
            py.remaining_in_part,
        ), text


async def test_login_status_sla_colours_and_screen_fit(
    desk: Desk, desk_browser: DeskBrowser
) -> None:
    svc = desk.services
    page = await desk_browser.new_page()
    await page.goto(f"{desk.base_url}/desk/")
    await page.fill("#login-user", "agent1")
    await page.fill("#login-pass", "wrong password")
    await page.click("#login-submit")
    await page.wait_for_function("() => document.getElementById('login-error').textContent !== ''")
    assert await page.is_hidden("#desk-view")
    await desk.login(page, "agent1")

    # No PBX is linked here: the pause cannot reach Asterisk, so the desk says so and
    # stays on the state the server knows (the real pause: test_desk_controls.py).
    await page.select_option("#status-select", "paused")
    await page.wait_for_function(
        "() => document.getElementById('notice').textContent.startsWith('Status not changed')"
    )
    assert "no PBX link" in (await page.text_content("#notice") or "")
    assert await page.get_attribute("body", "data-status") == "available"
    assert await page.input_value("#status-select") == "available"

    # A status frame built while another PBX's node did not answer (cti.presence) is
    # partial: the desk says which PBX it leaves out, as text.
    agent = await svc.agents.by_login("agent1")
    assert agent is not None
    svc.hub.publish([agent.id], "agent_status", {
        "endpoint": agent.endpoint, "paused": True, "reason": "lunch", "queues": [],
        "pbx": ["pbx1"], "unavailable": ["pbx2", IMG],
    })
    await page.wait_for_function(
        "() => document.getElementById('status-note').dataset.partial === '1'")
    note = await page.text_content("#status-note") or ""
    assert "pbx2" in note and IMG in note and "not answering" in note, note
    assert await page.get_attribute("body", "data-status") == "paused:lunch"
    svc.hub.publish([agent.id], "agent_status", {
        "endpoint": agent.endpoint, "paused": False, "reason": "", "queues": [],
        "pbx": ["pbx1", "pbx2"]})
    await page.wait_for_function(
        "() => document.getElementById('status-note').dataset.partial === ''")
    assert await page.get_attribute("body", "data-status") == "available"

    now = datetime.now(UTC)
    ids: dict[str, int] = {}
    for state, age in (("red", 90), ("amber", 45), ("green", 1)):
        conv = await svc.inbox.receive("chat", f"visitor-{state}", "hi", skill="fr")
        async with svc.sessions() as session, session.begin():
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conv.id)
                .values(queued_at=now - timedelta(seconds=age))
            )
        ids[state] = conv.id
    for state, conv_id in ids.items():
        await page.locator(f"#queue-list li[data-id='{conv_id}'] button.take").click()
        await page.wait_for_selector(f"#tabs .tab[data-id='{conv_id}'][aria-selected=true]")
        await page.wait_for_function(
            "(s) => document.getElementById('sla').dataset.state === s", arg=state
        )
    await page.click(f"#tabs .tab[data-id='{ids['red']}']")
    await page.wait_for_function("() => document.getElementById('sla').dataset.state === 'red'")
    # A message for a background tab counts as unread until the tab is opened.
    await svc.inbox.receive("chat", "visitor-amber", "are you there?")
    badge = page.locator(f"#tabs .tab[data-id='{ids['amber']}'] .badge")
    await badge.wait_for()
    assert await badge.text_content() == "1"
    await page.wait_for_function(
        "() => document.getElementById('timeline-more').textContent === 'end of history'"
    )
    await desk_browser.screenshot(page, "desk-sla-1366x768")
    size = await page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    assert size[0] <= 1366 and size[1] <= 768, size

    # A draft survives a reload.
    await page.fill("#reply", "draft in progress")
    await page.reload()
    await page.wait_for_selector("#conn.conn-up")
    await page.click(f"#tabs .tab[data-id='{ids['red']}']")
    await page.wait_for_function(
        "() => document.getElementById('reply').value === 'draft in progress'"
    )

    # Unknown contact: quick create makes a customer and links the contact to it.
    await page.fill("#quick-name", "Red <b>Visitor</b>")
    await page.click("#card form.quick button >> nth=0")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'Red <b>Visitor</b>'"
    )
    found = await svc.customers.lookup("webchat", "visitor-red")
    assert found is not None and found.name == "Red <b>Visitor</b>" and not found.provisional


async def test_unknown_caller_is_linked_to_an_existing_customer(
    desk: Desk, desk_browser: DeskBrowser
) -> None:
    svc = desk.services
    known = await svc.customers.create("John Smith", [ContactInput("phone", "+442079460123")])
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    await offer_call(desk, "+79995550000", "", "pbx1:1700000002.1", "agent1")
    await page.wait_for_selector("#card .unknown")
    assert await page.text_content("#card .unknown") == "Unknown caller"
    await page.fill("#quick-phone", "+44 20 7946 0123")
    await page.click("#card form.quick button >> nth=1")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'John Smith'"
    )
    assert "+79995550000" in (await page.text_content("#card") or "")
    found = await svc.customers.lookup("phone", "+79995550000")
    assert found is not None and found.id == known.id


async def test_network_drop_reconnects_and_replays_missed_pop(
    cuttable: tuple[Desk, CuttableLink], desk_browser: DeskBrowser
) -> None:
    desk, link = cuttable
    svc = desk.services
    await svc.customers.create("Анна Смирнова", [ContactInput("phone", "+79035550101")])
    await svc.customers.create("John Smith", [ContactInput("phone", "+442079460123")])
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    agent = await svc.agents.by_endpoint("PJSIP/agent1")
    assert agent is not None
    agent1 = agent.id
    await offer_call(desk, "+79035550101", "ANNA", "pbx1:1700000003.1", "agent1")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'Анна Смирнова'"
    )
    seen = int(await page.get_attribute("body", "data-last-seq") or "0")

    await link.cut()
    await page.wait_for_selector("#conn.conn-down")

    async def server_dropped_it() -> bool:
        return agent1 not in svc.hub.connected_agents()

    await wait_for(server_dropped_it, "the server to see the socket gone")
    await offer_call(desk, "+442079460123", "JOHN", "pbx1:1700000003.2", "agent1")
    await link.restore()
    await page.wait_for_selector("#conn.conn-up")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'John Smith'"
    )
    # The same page (no reload) asked for what followed its last seq: two pops in all.
    assert await page.get_attribute("body", "data-resumed-from") == str(seen)
    assert await page.get_attribute("body", "data-pops") == "2"
