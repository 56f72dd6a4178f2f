"""SMS gateway failover across nodes: two ``cti serve`` nodes on PostgreSQL + Redis.

Node A holds the SMPP link ``op``, whose SMSC (node-smpp) refuses every bind
at first; node B holds the GSM modem ``gsm1`` (the PTY emulator): both nodes list
both gateways, but the modem's port exists only in B's configuration, so only
B may hold it (a modem is plugged into one host). A reply queued on ``op``
while no node runs the modem goes out through B's modem after
``sms_failover_after``: moved once (compare-and-set on the outbox row), sent
once (three UCS-2 parts), delivered, with one ``sms_rerouted`` event.

Then a gateway with no holder: a reply for a number routed to the modem first
is queued on it while it is unplugged, and B is killed with SIGKILL. No node
may take the modem (A has no such port), so after ``sms_failover_after`` with
no holder A moves the reply (under the failover lock) to ``op``, whose SMSC
now accepts the bind: submitted once, one more ``sms_rerouted``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cti.config import Settings
from cti.models import HistoryEvent
from cti.services import Services
from cti.sms_outbox import SmsOutboxRow
from tests.integration.cluster.conftest import OwnRedis
from tests.integration.cluster.nodes import (
    ADMIN,
    CTI,
    GATED_SERVE,
    PYTHON,
    SECRET,
    Node,
    close_all,
    duties_of,
    node_env,
    prepare_database,
    until,
)
from tests.modem_emulator import ModemEmulator
from tests.peers.databases import _createdb
from tests.peers.ports import free_port
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration
_dbs = itertools.count(1)
CUSTOMER = "+74951234567"  # routed to op first, then gsm1
MOBILE = "+79161234567"  # routed to gsm1 first, then op
REPLY = "Добрый день! Заказ 4711 передан курьеру, он позвонит завтра до 12:00. Спасибо!" * 2
SECOND = "Курьер будет у вас сегодня с 15:00 до 18:00."
FAILOVER_AFTER = 3


@dataclass
class ConfiguredNode(Node):
    """A node started with ``--config`` (the gateways are listed in a TOML file)."""

    config: Path | None = None

    def start(self, gated: bool = False) -> None:
        command = [str(PYTHON), "-c", GATED_SERVE] if gated else [str(CTI)]
        assert self.config is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*command, "serve", "--log-level", "INFO", "--config", str(self.config)],
                env=self.env, cwd=self.log.parent, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
            )


def gateways_toml(modem_port: Path, smpp_url: str) -> str:
    return (
        f"[server]\nsms_failover_after = {FAILOVER_AFTER}\n\n"
        f'[[smpp]]\nname = "op"\nurl = "{smpp_url}"\n\n'
        f'[[modem]]\nname = "gsm1"\nport = "{modem_port}"\n\n'
        '[[sms_route]]\ngateway = "gsm1"\nprefixes = ["+7916"]\n\n'
        '[[sms_route]]\ngateway = "op"\n\n'
        '[[sms_route]]\ngateway = "gsm1"\n'
    )


@pytest.fixture
async def setup(
    postgres_url: str, own_redis: OwnRedis, smsc: Smsc, tmp_path: Path,
) -> AsyncIterator[tuple[ConfiguredNode, ConfiguredNode, str, ModemEmulator]]:
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    name = f"smsfo{os.getpid()}_{next(_dbs)}"
    _createdb(port, name)
    db_url = postgres_url.rsplit("/", 1)[0] + "/" + name
    emulator = ModemEmulator(tmp_path / "ttyGSM0", auto_status_report=0).start()
    await smsc.configure(bind_status=0x0D)  # ESME_RBINDFAIL: op stays down
    smpp_url = smsc.url(reconnect_min=0.2, reconnect_max=1)
    nodes: list[ConfiguredNode] = []
    for node_name, modem_port in (("A", tmp_path / "not-on-this-host" / "ttyGSM0"),
                                  ("B", emulator.link)):
        config = tmp_path / f"cti-{node_name}.toml"
        config.write_text(gateways_toml(modem_port, smpp_url))
        http = free_port()
        nodes.append(ConfiguredNode(node_name, http, node_env(node_name, http, db_url,
                                                              own_redis.url),
                                    tmp_path / f"node-{node_name}.log", config=config))
    try:
        yield nodes[0], nodes[1], db_url, emulator
    finally:
        await close_all(list(nodes))
        emulator.stop()


async def in_db(db_url: str, what: Any) -> Any:
    services = Services(Settings(db_url=db_url, secret_key=SECRET))
    await services.start()
    try:
        return await what(services)
    finally:
        await services.stop()


async def outbox(db_url: str) -> list[SmsOutboxRow]:
    async def read(services: Services) -> list[SmsOutboxRow]:
        async with services.sessions() as session:
            return list(await session.scalars(select(SmsOutboxRow).order_by(SmsOutboxRow.id)))

    rows: list[SmsOutboxRow] = await in_db(db_url, read)
    return rows


async def events(db_url: str, kind: str) -> list[HistoryEvent]:
    async def read(services: Services) -> list[HistoryEvent]:
        async with services.sessions() as session:
            return list(await session.scalars(
                select(HistoryEvent).where(HistoryEvent.kind == kind).order_by(HistoryEvent.id)))

    rows: list[HistoryEvent] = await in_db(db_url, read)
    return rows


async def open_conversation(db_url: str, number: str) -> int:
    async def make(services: Services) -> int:
        customer, _ = await services.customers.identify("phone", number)
        conv, _ = await services.conversations.open("sms", customer.id, contact=number)
        return conv.id

    conv_id: int = await in_db(db_url, make)
    return conv_id


async def test_reply_on_a_down_link_goes_out_through_the_other_nodes_modem(
    setup: tuple[ConfiguredNode, ConfiguredNode, str, ModemEmulator], smsc: Smsc,
) -> None:
    node_a, node_b, db_url, emulator = setup
    node_a.start(gated=True)
    node_b.start(gated=True)
    await prepare_database(db_url)
    node_a.release()
    await node_a.wait_ready()

    async def a_holds_the_link() -> bool:
        seen = await duties_of(node_a)
        return bool(seen.get("sms:op", {}).get("held")) and \
            seen.get("modem:gsm1", {}).get("detail") == "not eligible on this node"

    await until("A holding op and not eligible for the modem", a_holds_the_link)
    conv_id = await open_conversation(db_url, CUSTOMER)
    admin = await node_a.login(*ADMIN)
    status, body = await node_a.call("POST", f"/api/v1/conversations/{conv_id}/take", admin)
    assert status == 200, body
    # The link is down and no node runs the modem: the reply waits on the best route, op.
    status, body = await node_a.call("POST", f"/api/v1/conversations/{conv_id}/messages",
                                     admin, {"text": REPLY})
    assert status == 201, body
    (row,) = await outbox(db_url)
    assert (row.gateway, row.status) == ("op", "queued")

    node_b.release()
    await node_b.wait_ready()
    ready = time.monotonic()

    async def delivered(key: str) -> bool:
        rows = {r.key: r for r in await outbox(db_url)}
        return rows[key].status == "delivered"

    try:
        await until("the reply moved to B's modem and delivered",
                    lambda: delivered(row.key), within=60)
    except AssertionError:
        print(node_a.tail(), node_b.tail(), sep="\n----\n")
        raise
    print(f"\ncross-node failover: delivered {time.monotonic() - ready:.1f} s after B was "
          f"ready (failover_after {FAILOVER_AFTER} s, state every 2 s)")
    (done,) = await outbox(db_url)
    assert done.gateway == "gsm1" and len(done.smsc_ids) == 3
    parts = [s for s in emulator.submits if s.destination == CUSTOMER]
    assert len(parts) == 3 and "".join(p.text for p in parts) == REPLY  # sent once
    (moved,) = await events(db_url, "sms_rerouted")
    assert moved.conversation_id == conv_id
    assert (moved.payload["from"], moved.payload["to"]) == ("op", "gsm1")
    states = [e.payload["status"] for e in await events(db_url, "sms_status")]
    assert states.count("delivered") == 1
    health = (await node_a.health())["links"]["modem:gsm1"]
    assert (health["held_by"], health["gateway_up"]) == ("B", True)

    # A gateway with no holder: the modem is unplugged; a reply to a mobile number
    # (routed to the modem first) waits on it; then B, the modem's only holder, dies.
    emulator.unplug()

    async def modem_down_for_a() -> bool:
        return (await node_a.health())["links"]["modem:gsm1"]["gateway_up"] is False

    await until("A seeing the modem down", modem_down_for_a, within=30)
    mobile_conv = await open_conversation(db_url, MOBILE)
    admin_b = await node_b.login(*ADMIN)
    status, body = await node_b.call("POST", f"/api/v1/conversations/{mobile_conv}/take",
                                     admin_b)
    assert status == 200, body
    status, body = await node_b.call("POST", f"/api/v1/conversations/{mobile_conv}/messages",
                                     admin_b, {"text": SECOND})
    assert status == 201, body
    second = (await outbox(db_url))[-1]
    assert (second.gateway, second.status) == ("gsm1", "queued")
    node_b.kill9()
    killed = time.monotonic()
    await smsc.configure(bind_status=0)  # op binds on A from now on

    async def sent(key: str) -> bool:
        rows = {r.key: r for r in await outbox(db_url)}
        return rows[key].status != "queued"

    try:
        await until("A moving the reply off the modem no node holds", lambda: sent(second.key),
                    within=60)
    except AssertionError:
        print(node_a.tail())
        raise
    print(f"holderless failover: submitted {time.monotonic() - killed:.1f} s after kill -9 "
          f"(lease TTL 5 s + failover_after {FAILOVER_AFTER} s)")
    moved_row = (await outbox(db_url))[-1]
    assert moved_row.gateway == "op" and moved_row.status in ("submitted", "delivered")
    submits = [s for s in smsc.recorded_submits() if s["text"] == SECOND]
    assert len(submits) == 1, smsc.recorded_submits()
    assert submits[0]["destination"] == MOBILE.lstrip("+")
    assert [(e.payload["message_ref"], e.payload["from"], e.payload["to"])
            for e in await events(db_url, "sms_rerouted")] == [
        (row.key, "op", "gsm1"), (second.key, "gsm1", "op")]
    assert len([s for s in emulator.submits if s.text == SECOND]) == 0
