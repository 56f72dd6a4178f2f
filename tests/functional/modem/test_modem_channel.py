"""A GSM modem (PTY emulator) as an SMS channel of the whole cti app, from the config.

[[modem]] in the config file -> ``sms_links()`` runs a ModemGateway on the
database outbox: an MO SMS pops an ``sms`` conversation, the agent's reply goes
out through the modem with a status report back as ``delivered``, a call to the
SIM is a missed call on the caller's timeline, and health shows the modem.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from cti.app import create_app
from cti.config import (
    BootstrapAdmin,
    ConfigError,
    ModemLink,
    Settings,
    SmppLink,
    load_settings,
)
from cti.keys import SERVICES
from cti.links.sms import SmsChannel, default_modem_config, sms_links
from cti.models import HistoryEvent
from sms_gateway.modem.driver import ModemConfig
from sms_gateway.outbox import OutboundSms
from tests.modem_emulator import ModemEmulator
from tests.peers.ports import free_port

from .conftest import FAST

ADMIN = ("admin", "admin-password")
CUSTOMER = "+79161234567"
MO_TEXT = "Здравствуйте! Где мой заказ 4711? Жду уже неделю, " * 2
REPLY = "Добрый день! Заказ 4711 передан курьеру, он позвонит завтра до 12:00. Спасибо!" * 2


def fast(link: ModemLink) -> ModemConfig:
    base = default_modem_config(link)
    return ModemConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **FAST})


async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str,
                  within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        data: dict[str, Any] = json.loads(msg.data)
        if data.get("type") == kind:
            return data


async def until(what: str, check: Callable[[], Any], within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def test_modem_and_routes_from_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "cti.toml"
    conf.write_text(
        '[[smpp]]\nname = "op"\nurl = "smpp://cti:secret@127.0.0.1:2775"\n'
        '[[modem]]\nname = "gsm1"\nport = "/dev/ttyUSB0"\npin = "1234"\n'
        '[[sms_route]]\ngateway = "gsm1"\nprefixes = ["+7916"]\n'
        '[[sms_route]]\ngateway = "op"\n', encoding="utf-8")
    settings = load_settings(conf, environ={})
    (modem,) = settings.modems
    assert (modem.name, modem.port, modem.pin, modem.indication) == \
        ("gsm1", "/dev/ttyUSB0", "1234", "cmti")
    assert "1234" not in repr(settings)
    assert [(r.gateway, r.prefixes) for r in settings.sms_routes] == \
        [("gsm1", ("+7916",)), ("op", ())]
    for bad, message in [
        ('[[modem]]\nport = "ttyUSB0"\n', "device path"),
        ('[[modem]]\nport = "/dev/ttyUSB0"\npin = "12ab"\n', "4 to 8 digits"),
        ('[[modem]]\nport = "/dev/x"\nspeed = 9600\n', "unknown key"),
        ('[[sms_route]]\ngateway = "nowhere"\n', "unknown gateway"),
        ('[[modem]]\nname = "a"\nport = "/dev/x"\n[[modem]]\nname = "a"\nport = "/dev/y"\n',
         "must be unique"),
    ]:
        conf.write_text(bad, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_settings(conf, environ={})


async def test_modem_channel_end_to_end(
    db_url: str, tmp_path: Path, emulator_factory: Callable[..., ModemEmulator]
) -> None:
    emulator = emulator_factory(auto_status_report=0)  # TP-ST 0: delivered
    settings = Settings(
        db_url=db_url, data_dir=tmp_path, secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN), history_flush_interval=0.01,
        modems=(ModemLink("gsm1", str(emulator.link)),),
    )
    app = create_app(settings)
    app.cleanup_ctx.append(sms_links(modem_tuning=fast))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post("/api/v1/auth/token",
                                 json={"login": ADMIN[0], "password": ADMIN[1]})
        admin = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        resp = await client.post("/api/v1/agents", headers=admin, json={
            "login": "olga", "password": "agent-password", "name": "Ольга"})
        assert resp.status == 201, await resp.text()
        resp = await client.post("/api/v1/auth/token",
                                 json={"login": "olga", "password": "agent-password"})
        token = (await resp.json())["token"]
        auth = {"Authorization": f"Bearer {token}"}
        ws = await client.ws_connect("/api/v1/events", params={"token": token})

        async def modem_up() -> dict[str, Any] | None:
            link: dict[str, Any] = (await (await client.get("/api/v1/health")).json())[
                "links"]["modem:gsm1"]
            return link if link["up"] else None

        health = await until("the modem to come online", modem_up)
        assert health["kind"] == "modem" and health["sim"] == "ready"
        assert health["registration"] and health["signal_rssi"] == emulator.rssi

        emulator.deliver_sms(CUSTOMER, MO_TEXT, order=[1, 0])
        pop = await receive(ws, "screen_pop")
        assert pop["channel"] == "sms" and pop["conversation"]["contact"] == CUSTOMER
        conv_id = pop["conversation"]["id"]
        customer_id = pop["customer"]["id"]
        assert any(e.get("payload", {}).get("text") == MO_TEXT for e in pop["history"])

        resp = await client.post(f"/api/v1/conversations/{conv_id}/messages",
                                 json={"text": REPLY}, headers=auth)
        assert resp.status in (200, 201), await resp.text()
        status = await receive(ws, "delivery_status")
        assert status["status"] == "delivered" and status["conversation_id"] == conv_id
        parts = [s for s in emulator.submits if s.destination == CUSTOMER]
        assert "".join(p.text for p in parts) == REPLY and len(parts) == 3
        assert all(p.ucs2 and p.status_report for p in parts)

        emulator.ring(CUSTOMER)

        async def missed() -> list[dict[str, Any]]:
            resp = await client.get(f"/api/v1/customers/{customer_id}/history",
                                    params={"limit": "100"}, headers=auth)
            events: list[dict[str, Any]] = (await resp.json())["events"]
            return [e for e in events if e["kind"] == "call_missed"]

        (call,) = await until("the missed call in the history", missed)
        assert call["payload"]["number"] == CUSTOMER and call["payload"]["via"] == "modem:gsm1"
        await ws.close()
    finally:
        await client.close()


async def test_queued_reply_moves_to_the_modem_when_the_smpp_link_stays_down(
    db_url: str, tmp_path: Path, emulator_factory: Callable[..., ModemEmulator]
) -> None:
    emulator = emulator_factory(auto_status_report=0)
    dead = free_port(host="127.0.0.1")  # nothing listens: the SMPP link never binds
    settings = Settings(
        db_url=db_url, data_dir=tmp_path, secret_key="test-secret",
        bootstrap_admin=BootstrapAdmin(*ADMIN), history_flush_interval=0.01,
        smpp=(SmppLink("op", "127.0.0.1", dead, "cti", "secret"),),
        modems=(ModemLink("gsm1", str(emulator.link)),),
    )
    running: list[SmsChannel] = []
    app = create_app(settings)
    app.cleanup_ctx.append(sms_links(modem_tuning=fast, running=running))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        (channel,) = running
        channel.failover_after, channel.failover_check = 1.0, 0.2
        services = app[SERVICES]
        customer, _ = await services.customers.identify("phone", CUSTOMER)
        conv, _ = await services.conversations.open("sms", customer.id, contact=CUSTOMER)

        async def modem_up() -> bool:
            return channel.modems["gsm1"].available

        await until("the modem to come online", modem_up)
        emulator.unplug()

        async def modem_down() -> bool:
            return not channel.modems["gsm1"].available

        await until("the modem to go down", modem_down)
        # Both gateways down: the reply is queued on the best route, the SMPP link.
        status = await channel.send("sms", CUSTOMER, REPLY, conv.id)
        assert status == "queued"
        (queued,) = [m for m in await channel._outbox.unfinished("op")]
        assert queued.text == REPLY and queued.gateway == "op"
        emulator.replug()

        async def delivered() -> list[OutboundSms]:
            message = await channel._outbox.get(queued.key)
            return [message] if message is not None and message.status == "delivered" else []

        (done,) = await until("the moved reply to be delivered", delivered, within=40.0)
        assert done.gateway == "gsm1" and done.parts == 3
        parts = [s for s in emulator.submits if s.destination == CUSTOMER]
        assert "".join(p.text for p in parts) == REPLY
        assert await channel._outbox.unfinished("op") == []
        await services.history.flush()
        async with services.sessions() as session:
            kinds = (await session.scalars(
                select(HistoryEvent.kind).where(HistoryEvent.conversation_id == conv.id))).all()
        assert "sms_rerouted" in kinds
    finally:
        await client.close()
