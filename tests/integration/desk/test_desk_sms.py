"""SMS in the desk end to end: the test bed SMSC (node-smpp) <-> the whole server <-> Chromium.

An MO SMS pops a conversation in agent1's desk; the agent replies with a
template whose variables come from the card; the SMSC receives that text; its
delivery receipt shows as delivered in the conversation and the timeline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from cti.config import Settings, SmppLink
from cti.customers import ContactInput
from cti.desk_api import seed_desk
from cti.keys import SERVICES
from cti.serve import build_app
from sms_gateway.encoding import count_segments
from tests.integration.desk.conftest import PASSWORD, Desk
from tests.peers.browser import DeskBrowser
from tests.peers.smsc import Smsc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

TIMEOUT = 40.0
CUSTOMER = "+79161234567"
NAME = "Мария <img src=x onerror=alert(1)>"


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def reassembled(smsc: Smsc, text: str) -> dict[str, Any] | None:
    for message in (await smsc.state())["messages"].values():
        if message.get("complete") and message.get("text") == text:
            return dict(message)
    return None


@pytest.fixture
async def sms_desk(tmp_path: Path, smsc: Smsc) -> AsyncIterator[Desk]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'desk.sqlite3'}",
        data_dir=tmp_path,
        secret_key="desk-sms-secret",
        history_flush_interval=0.01,
        smpp=(SmppLink("smpp1", "127.0.0.1", smsc.smpp_port, "cti", "secret"),),
    )
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    services = app[SERVICES]
    try:
        await services.agents.create("agent1", PASSWORD, name="Agent 1")
        await seed_desk(services)

        async def bound() -> bool:
            report = await services.links.report()
            return bool(report.get("smpp:smpp1", {}).get("up"))

        await until("the SMPP link to bind", bound)
        yield Desk(str(server.make_url("")).rstrip("/"), services)
    finally:
        await server.close()


async def test_mo_sms_template_reply_and_delivery_receipt(
    sms_desk: Desk, smsc: Smsc, desk_browser: DeskBrowser
) -> None:
    desk = sms_desk
    await desk.services.customers.create(
        NAME, [ContactInput("phone", CUSTOMER)], custom={"order": "4711"}
    )
    page = await desk_browser.new_page()
    await desk.login(page, "agent1")

    sent = await smsc.acall(
        "POST", "/mo", {"source": CUSTOMER, "destination": "CTI", "text": "Где мой заказ?"}
    )
    assert sent["sent"] == 1
    tab = page.locator("#tabs .tab")
    await tab.wait_for()
    await tab.click()
    await page.wait_for_function(
        "(n) => document.getElementById('card-name')?.textContent === n", arg=NAME
    )
    await page.wait_for_selector("#messages li.msg-in")

    await page.select_option("#template-select", label="Order shipped")
    await page.click("#template-insert")
    expected = f"Dear {NAME}, your order 4711 has been shipped."
    await page.wait_for_function(
        "(t) => document.getElementById('reply').value === t", arg=expected
    )
    parts = count_segments(expected)
    assert parts.coding == "ucs2" and parts.parts == 2  # Cyrillic: two UCS-2 parts
    assert await page.text_content("#segments") == (
        f"UCS-2: 2 SMS, {parts.remaining_in_part} left in this part"
    )
    await page.click("#send")
    await page.wait_for_selector("#messages li.msg-out")

    async def arrived() -> bool:
        return await reassembled(smsc, expected) is not None

    await until("the SMSC to receive the templated reply", arrived)
    message = await reassembled(smsc, expected)
    assert message is not None
    for message_id in message["message_ids"].values():
        await smsc.acall("POST", "/dlr", {"message_id": message_id, "stat": "DELIVRD"})

    await page.wait_for_function(
        "() => document.querySelector('#messages li.msg-out .msg-meta')"
        "?.textContent.endsWith('delivered')"
    )
    delivered = page.locator("#timeline li[data-kind=delivery_status]").first
    await delivered.wait_for()
    assert "status: delivered" in (await delivered.text_content() or "")
    assert await page.locator("#desk-view img").count() == 0
    await desk_browser.screenshot(page, "desk-sms-delivered")
    assert desk_browser.dialogs == []
