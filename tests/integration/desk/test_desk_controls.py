"""Desk tools in real Chromium against the whole server (cti.serve.build_app).

Templates with variables, tags, notes, conversation transfer, merge with undo,
markup in every customer string; the API's role checks behind them.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from cti.auth import Role
from cti.customers import ContactInput
from cti.history import timeline
from cti.models import Customer
from tests.integration.desk.conftest import PASSWORD, Desk, wait_for
from tests.integration.desk.test_desk import IMG, SCRIPT, offer_call
from tests.peers.browser import DeskBrowser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


async def token(session: aiohttp.ClientSession, base: str, login: str) -> dict[str, str]:
    async with session.post(
        f"{base}/api/v1/auth/token", json={"login": login, "password": PASSWORD}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    auth: dict[str, str],
    body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    async with session.request(method, url, json=body, headers=auth) as resp:
        return resp.status, await resp.json()


async def test_template_api_roles_and_validation(desk: Desk) -> None:
    base = f"{desk.base_url}/api/v1"
    async with aiohttp.ClientSession() as s:
        agent = await token(s, desk.base_url, "agent1")
        boss = await token(s, desk.base_url, "boss")
        status, body = await call(s, "GET", f"{base}/templates", agent)
        assert status == 200 and {t["name"] for t in body["templates"]} >= {"Greeting"}
        status, body = await call(s, "GET", f"{base}/templates?channel=chat", agent)
        assert "Order shipped" not in {t["name"] for t in body["templates"]}  # an SMS template
        new = {"name": "Refund", "body": "Hi {name}, refund for {order} is done.", "channel": "sms"}
        status, body = await call(s, "POST", f"{base}/templates", agent, new)
        assert status == 403, body
        status, made = await call(s, "POST", f"{base}/templates", boss, new)
        assert status == 201 and made["body"] == new["body"], made
        status, body = await call(s, "POST", f"{base}/templates", boss, new)
        assert status == 409 and body["error"]["details"]["field"] == "name"
        status, body = await call(
            s, "POST", f"{base}/templates", boss, {"name": "x", "body": "y", "channel": "S M S"}
        )
        assert status == 422 and body["error"]["details"]["field"] == "channel"
        status, body = await call(
            s, "POST", f"{base}/templates", boss, {"name": "big", "body": "y" * 5000}
        )
        assert status == 422 and body["error"]["details"]["field"] == "body"
        status, body = await call(
            s, "PUT", f"{base}/templates/{made['id']}", boss, {"body": "Refund {order} done."}
        )
        assert status == 200 and body["body"] == "Refund {order} done." and body["channel"] == "sms"
        status, body = await call(s, "DELETE", f"{base}/templates/{made['id']}", agent)
        assert status == 403
        status, body = await call(s, "DELETE", f"{base}/templates/{made['id']}", boss)
        assert status == 200 and body["deleted"] is True
        status, body = await call(s, "DELETE", f"{base}/templates/{made['id']}", boss)
        assert status == 404

        status, body = await call(s, "POST", f"{base}/tags", agent, {"name": "refund"})
        assert status == 201 and body["name"] == "refund"
        status, body = await call(s, "POST", f"{base}/tags", agent, {"name": "refund"})
        assert status == 409
        status, body = await call(s, "POST", f"{base}/wrap-up-codes", agent, {"code": "x"})
        assert status == 403
        status, body = await call(
            s, "POST", f"{base}/wrap-up-codes", boss, {"code": "refunded", "label": "Refunded"}
        )
        assert status == 201
        status, body = await call(s, "GET", f"{base}/wrap-up-codes", agent)
        assert "refunded" in {c["code"] for c in body["codes"]}

        conv = await desk.services.inbox.receive("chat", "visitor-1", "hi")
        assert conv.owner_id is not None
        owner = await desk.services.conversations.owner_login(conv)
        assert owner in ("agent1", "agent2"), owner
        other = "agent2" if owner == "agent1" else "agent1"
        url = f"{base}/conversations/{conv.id}/tags"
        status, body = await call(s, "POST", url, await token(s, desk.base_url, other),
                                  {"tags": ["billing"]})
        assert status == 403
        owner_auth = await token(s, desk.base_url, owner)
        status, body = await call(s, "POST", url, owner_auth, {"tags": ["billing", "nope"]})
        assert status == 422 and body["error"]["details"]["unknown"] == ["nope"]
        status, body = await call(s, "POST", url, owner_auth, {"tags": "billing"})
        assert status == 422
        status, body = await call(
            s, "POST", f"{base}/customers/{conv.customer_id}/notes", owner_auth, {"text": "  "}
        )
        assert status == 422
        status, body = await call(
            s, "POST", f"{base}/customers/999999/notes", owner_auth, {"text": "x"}
        )
        assert status == 404


async def test_template_tags_notes_and_transfer_in_the_desk(
    desk: Desk, desk_browser: DeskBrowser
) -> None:
    svc = desk.services
    name = f"Пётр {SCRIPT}"
    customer = await svc.customers.create(
        name, [ContactInput("phone", "+79035550111")], custom={"order": "A-4711"}
    )
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")
    # Only agent1 is signed in, but agent2 could take it too: give it to agent1 explicitly.
    conv = await svc.inbox.receive("sms", "+79035550111", "Где мой заказ?", skill="fr")
    agent1 = await svc.agents.by_login("agent1")
    assert agent1 is not None
    await svc.conversations.take(conv.id, agent1.id)
    await page.locator(f"#mine-list li[data-id='{conv.id}'] button").click()
    await page.wait_for_selector(f"#tabs .tab[data-id='{conv.id}'][aria-selected=true]")

    # Template: variables filled from the card ({name}, {order}) and the agent ({agent}).
    await page.wait_for_selector("#template-select option:text('Order shipped')", state="attached")
    await page.select_option("#template-select", label="Order shipped")
    await page.click("#template-insert")
    expected = f"Dear {name}, your order A-4711 has been shipped."
    await page.wait_for_function(
        "(t) => document.getElementById('reply').value === t", arg=expected
    )
    assert "SMS" in (await page.text_content("#segments") or "")
    await page.select_option("#template-select", label="Greeting")
    await page.click("#template-insert")
    await page.wait_for_function(
        "(t) => document.getElementById('reply').value.endsWith(t)",
        arg=f"{expected} Hello {name}, this is Agent 1. How can I help you?",
    )
    await page.fill("#reply", expected)
    await page.click("#send")
    await page.wait_for_selector("#messages li.msg-out")
    assert expected in (await page.text_content("#messages li.msg-out") or "")

    # Tags: add two, remove one; the conversation and its history follow.
    for tag in ("delivery", "vip"):
        await page.select_option("#tag-select", tag)
        await page.click("#tag-add")
        await page.wait_for_selector(f"#conv-tags .chip[data-tag='{tag}']")
    await page.click("#conv-tags .chip[data-tag='vip'] button")
    await page.wait_for_selector("#conv-tags .chip[data-tag='vip']", state="detached")
    assert (await svc.conversations.get(conv.id)).tags == ["delivery"]

    # Notes: markup is data.
    note = f"called back {IMG} <b>bold</b>"
    await page.fill("#note-text", note)
    await page.click("#note-add")
    first = page.locator("#timeline li").first
    await page.wait_for_function(
        "(t) => document.querySelector('#timeline li .tl-text')?.textContent === t", arg=note
    )
    assert await first.get_attribute("data-kind") == "note"

    async def stored() -> bool:
        events, _ = await timeline(svc.sessions, customer.id, limit=50)
        kinds = {e.kind: e.payload for e in events}
        return kinds.get("note", {}).get("text") == note and "tagged" in kinds

    await wait_for(stored, "the note and the tags in the history")
    await desk_browser.screenshot(page, "desk-sms-template")
    assert await page.locator("#desk-view img, #desk-view script, #desk-view b").count() == 0
    assert desk_browser.dialogs == []

    # Transfer to a colleague: the tab goes, agent2 owns it, the history says so.
    await page.select_option("#conv-xfer-kind", "agent")
    await page.fill("#conv-xfer-target", "agent2")
    await page.click("#conv-xfer")
    await page.wait_for_selector(f"#tabs .tab[data-id='{conv.id}']", state="detached")
    moved = await svc.conversations.get(conv.id)
    assert await svc.conversations.owner_login(moved) == "agent2"

    async def transferred() -> bool:
        events, _ = await timeline(svc.sessions, customer.id, limit=50)
        return any(e.kind == "transferred" and e.payload.get("to_agent") == "agent2"
                   for e in events)

    await wait_for(transferred, "the transfer in the history")


async def test_merge_duplicates_with_undo(desk: Desk, desk_browser: DeskBrowser) -> None:
    svc = desk.services
    await svc.agents.create("lead", PASSWORD, name="Lead", endpoint="PJSIP/lead",
                            role=Role.SUPERVISOR)
    keep = await svc.customers.create("Анна Смирнова", [ContactInput("phone", "+79035550101")])
    dup = await svc.customers.create(
        f"Anna {SCRIPT}", [ContactInput("email", "anna@example.org"),
                            ContactInput("phone", "+79035550102")]
    )
    page = await desk_browser.new_page()
    await desk.login(page, "lead")
    assert await page.is_visible("#sup-links")
    assert await page.get_attribute("#link-reports", "href") == "/desk/static/reports.html"
    # rel="opener" (same origin): the new tab starts with a copy of this tab's session.
    async with page.context.expect_page() as opened:
        await page.click("#link-wallboard")
    board = await opened.value
    await board.wait_for_load_state()
    assert board.url == f"{desk.base_url}/wallboard/"
    assert await board.evaluate("() => sessionStorage.getItem('cti.token')") == \
        await page.evaluate("() => sessionStorage.getItem('cti.token')")
    await board.close()
    await offer_call(desk, "+79035550101", "ANNA", "pbx1:1700000009.1", "lead")
    await page.wait_for_function(
        "() => document.getElementById('card-name')?.textContent === 'Анна Смирнова'"
    )
    await page.click("#merge-open")
    await page.fill("#merge-source", "+7 903 555-01-02")
    await page.click("#merge-find")
    await page.wait_for_selector("#merge-source-name")
    assert await page.text_content("#merge-source-name") == f"Anna {SCRIPT}"
    await desk_browser.screenshot(page, "desk-merge-dialog")
    await page.click("#merge-confirm")
    await page.wait_for_selector("#merge-undo")
    await page.wait_for_function(
        "() => document.getElementById('card').textContent.includes('anna@example.org')"
    )
    async with svc.sessions() as session:
        row = await session.scalar(select(Customer).where(Customer.id == dup.id))
        assert row is not None and row.merged_into_id == keep.id
    found = await svc.customers.lookup("email", "anna@example.org")
    assert found is not None and found.id == keep.id

    await page.click("#merge-undo")
    await page.wait_for_selector("#merge-open")
    await page.wait_for_function(
        "() => !document.getElementById('card').textContent.includes('anna@example.org')"
    )
    assert "Merge undone" in (await page.text_content("#notice") or "")
    found = await svc.customers.lookup("email", "anna@example.org")
    assert found is not None and found.id == dup.id

    # An agent (not a supervisor) has no merge button and no supervisor links.
    other = await desk_browser.new_page()
    await desk.login(other, "agent1")
    await offer_call(desk, "+79035550101", "ANNA", "pbx1:1700000009.2", "agent1")
    await other.wait_for_selector("#card-name")
    assert await other.is_hidden("#merge-bar") and await other.is_hidden("#sup-links")
    # Answer goes to the agent's softphone; with none linked the desk says what to do.
    await other.click("#call-answer")
    await other.wait_for_function(
        "() => document.getElementById('notice').textContent.startsWith('No softphone linked')"
    )
    assert "cti phone" in (await other.text_content("#notice") or "")
    assert desk_browser.dialogs == []
