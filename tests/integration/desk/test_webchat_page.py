"""The customer chat page in real Chromium, phone-sized, against the real CTI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page

from cti.app import create_app
from cti.config import Settings
from cti.keys import SERVICES
from cti.services import Services
from cti.web import setup_web
from cti.webchat import chat_link
from cti.webchat.routes import setup_webchat
from tests.integration.desk.conftest import CuttableLink
from tests.peers.browser import DeskBrowser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORD = "chat-agent-password"
IMG = "<img src=x onerror=alert('y')>"
PHONE = {"width": 390, "height": 844}


@dataclass
class ChatServer:
    base_url: str
    port: int
    services: Services


@pytest.fixture
async def chat_server(tmp_path: Path) -> AsyncIterator[ChatServer]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}",
        data_dir=tmp_path,
        secret_key="chat-test-secret",
        history_flush_interval=0.01,
    )
    app = create_app(settings)
    setup_web(app)
    setup_webchat(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield ChatServer(str(server.make_url("")).rstrip("/"), server.port or 0, app[SERVICES])
    finally:
        await server.close()


async def reply(http: aiohttp.ClientSession, base: str, token: str, conv: int, text: str) -> Any:
    resp = await http.post(
        f"{base}/api/v1/conversations/{conv}/messages",
        json={"text": text},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def bubbles(page: Page, cls: str) -> list[str]:
    texts = await page.eval_on_selector_all(
        f"#chat-messages li.{cls} .msg-text", "ls => ls.map(l => l.textContent)"
    )
    return [str(t) for t in texts]


async def test_customer_chats_with_an_agent_from_a_phone(
    chat_server: ChatServer, desk_browser: DeskBrowser
) -> None:
    svc = chat_server.services
    await svc.agents.create("agent1", PASSWORD, name="Мария Иванова", queues=["support"])
    customer = await svc.customers.create("Анна", [])
    conv, _ = await svc.conversations.open("chat", customer.id, queue="support")
    link = CuttableLink(chat_server.port)
    await link.start()
    base = f"http://127.0.0.1:{link.port}"
    path = chat_link(svc, conv.id).split("/c/", 1)[1]
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{chat_server.base_url}/api/v1/auth/token",
            json={"login": "agent1", "password": PASSWORD},
        )
        agent_token = (await resp.json())["token"]
        try:
            page = await desk_browser.new_page()
            await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
            await page.goto(f"{base}/c/{path}")
            await page.wait_for_selector("#chat-conn[data-state=up]")
            # The status line follows the connection mark: on a loaded machine it can
            # still say "Connecting…" for a moment (a loaded full run read it then).
            await page.wait_for_function(
                "() => document.getElementById('chat-status').textContent"
                ".includes('Waiting for an agent')"
            )

            await page.fill("#chat-text", "Здравствуйте! Где мой заказ 123?")
            await page.click("#chat-send")
            await page.wait_for_selector("#chat-messages li.from-customer")
            # The message reached the queue: the only agent got it, the page names her.
            await page.wait_for_function(
                "() => document.getElementById('chat-status').textContent.includes('Мария Иванова')"
            )
            answer = "Добрый день! Заказ 123 уже в пути."
            assert (await reply(http, base, agent_token, conv.id, answer))["status"] == "delivered"
            await page.wait_for_selector("#chat-messages li.from-agent")
            assert await bubbles(page, "from-agent") == [answer]

            # HTML from the agent side is shown as text and runs nothing.
            await reply(http, base, agent_token, conv.id, IMG)
            await page.wait_for_function(
                "() => document.querySelectorAll('#chat-messages li.from-agent').length === 2"
            )
            assert await bubbles(page, "from-agent") == [answer, IMG]
            assert await page.query_selector("#chat-messages img") is None
            assert desk_browser.dialogs == []

            # The link drops; a reply sent meanwhile shows after the reconnect, nothing twice.
            await link.cut()
            await page.wait_for_selector("#chat-conn[data-state=down]")
            late = "Курьер позвонит за час."
            assert (await reply(http, chat_server.base_url, agent_token, conv.id, late))[
                "status"
            ] == "stored"
            await link.restore()
            await page.wait_for_selector("#chat-conn[data-state=up]", timeout=40_000)
            await page.wait_for_function(
                "() => document.querySelectorAll('#chat-messages li.from-agent').length === 3"
            )
            assert await bubbles(page, "from-agent") == [answer, IMG, late]
            assert await bubbles(page, "from-customer") == ["Здравствуйте! Где мой заказ 123?"]
            width = await page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= PHONE["width"], width  # nothing wider than the phone
            await desk_browser.screenshot(page, "webchat-phone")
        finally:
            await link.close()
