"""Cluster duties on two ``cti serve`` nodes (PostgreSQL, Redis, the node-smpp SMSC).

One SMPP link: exactly one node binds (the SMSC counts one session); an SMS
arriving (MO) becomes a conversation, its first-reply SLA breach is raised once
(history ``sla_breached``, ``sla_breach`` on the admin's desk on the other
node); an agent on the node that does not hold the link replies and the SMS
goes out through the holder. The holder is killed with SIGKILL; a reply sent
meanwhile waits in the database; the other node binds within seconds (the
failover time is printed) and sends it; nothing is submitted twice and the
breach is not raised again. The callback scheduler and the SLA watch are held
by one node each, and move too.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from cti.cluster.duties import Duties
from cti.cluster.redis_client import connect_redis
from cti.config import Settings
from cti.links.pbx import ami_url
from cti.models import Conversation, HistoryEvent
from cti.services import Services
from cti.sms_outbox import SmsOutboxRow
from tests.integration.cluster.conftest import OwnRedis
from tests.integration.cluster.nodes import (
    ADMIN,
    SECRET,
    Desk,
    Node,
    close_all,
    duties_of,
    holder_of_duty,
    node_env,
    start_pair,
    until,
)
from tests.peers.databases import _createdb
from tests.peers.ports import free_port
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration
_dbs = itertools.count(1)
DUTIES = ("sms:smpp1", "callbacks:pbx1", "sla")
CUSTOMER = "+79165550101"


def fresh_database(postgres_url: str) -> str:
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    name = f"duties{os.getpid()}_{next(_dbs)}"
    _createdb(port, name)
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def pair(
    postgres_url: str, own_redis: OwnRedis, smsc: Smsc, tmp_path: Path,
) -> AsyncIterator[tuple[Node, Node, str]]:
    db_url = fresh_database(postgres_url)
    # An AMI server nobody answers: its lease still decides where the callbacks run.
    ami = ami_url("127.0.0.1", free_port(), "cti", "secret")
    started: list[Node] = []

    def make(name: str) -> Node:
        port = free_port()
        env = node_env(name, port, db_url, own_redis.url, ami)
        env.update({"CTI_SMPP_URL": smsc.url(), "CTI_SMS_FIRST_REPLY_SLA": "2"})
        node = Node(name, port, env, tmp_path / f"node-{name}.log")
        started.append(node)
        return node

    try:
        node_a, node_b = make("A"), make("B")
        await start_pair(node_a, node_b, db_url)  # who takes which duty is up to the race
        yield node_a, node_b, db_url
    finally:
        await close_all(started)


async def history(db_url: str, kind: str) -> list[HistoryEvent]:
    services = Services(Settings(db_url=db_url, secret_key=SECRET))
    await services.start()
    try:
        async with services.sessions() as session:
            rows = await session.scalars(select(HistoryEvent).where(HistoryEvent.kind == kind)
                                         .order_by(HistoryEvent.id))
            return list(rows)
    finally:
        await services.stop()


async def outbox_statuses(db_url: str) -> list[str]:
    services = Services(Settings(db_url=db_url, secret_key=SECRET))
    await services.start()
    try:
        async with services.sessions() as session:
            rows = await session.scalars(select(SmsOutboxRow.status).order_by(SmsOutboxRow.id))
            return list(rows)
    finally:
        await services.stop()


async def sms_conversation_of(db_url: str, number: str) -> int | None:
    services = Services(Settings(db_url=db_url, secret_key=SECRET))
    await services.start()
    try:
        async with services.sessions() as session:
            conv_id: int | None = await session.scalar(
                select(Conversation.id).where(Conversation.channel == "sms",
                                              Conversation.contact == number)
                .order_by(Conversation.id.desc()).limit(1))
            return conv_id
    finally:
        await services.stop()


async def test_duties_run_once_hand_over_and_follow_eligibility(redis_url: str) -> None:
    """In-process, on a real Redis: one runner per duty, a graceful stop hands it over at
    the next tick, a node that is not eligible never takes it but names the holder."""
    client = connect_redis(redis_url.rsplit("/", 1)[0] + "/12")
    await client.flushdb()
    runs: list[str] = []

    def step(what: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            runs.append(what)

        return run

    # One client per node, as in real nodes: cancelling A's lease task mid-command
    # must not touch the connections B's lease uses.
    client_b = connect_redis(redis_url.rsplit("/", 1)[0] + "/12")
    a = Duties("A", client, ttl=1.0, renew_every=0.1)
    b = Duties("B", client_b, ttl=1.0, renew_every=0.1)
    eligible = {"B": False}
    try:
        await a.add("job", step("A+"), step("A-"))
        await until("A running the duty", lambda: _true(a.held("job")), within=10)
        await b.add("job", step("B+"), step("B-"), eligible=lambda: eligible["B"])
        await until("B naming the holder", lambda: _true(b.holder("job") == "A"), within=10)
        assert not b.held("job") and b.state()["job"]["detail"] == "not eligible on this node"
        await a.remove("job")  # graceful: released, but B may not take it
        assert runs == ["A+", "A-"] and a.holder("job") is None
        eligible["B"] = True
        await until("B taking the free duty", lambda: _true(b.held("job")), within=30)
        assert runs == ["A+", "A-", "B+"] and b.state()["job"]["token"] == 2
        eligible["B"] = False  # e.g. its AMI link went to another node: B lets go
        await until("B releasing the duty", lambda: _true(not b.held("job")), within=10)
        assert runs == ["A+", "A-", "B+", "B-"]
        assert await client.get("cti:lease:job") is None
    finally:
        await a.close()
        await b.close()
        await client.aclose()
        await client_b.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_one_owner_per_duty_and_failover(
    pair: tuple[Node, Node, str], smsc: Smsc,
) -> None:
    node_a, node_b, db_url = pair
    nodes = {"A": node_a, "B": node_b}

    last: list[object] = []

    async def settled() -> bool:
        """Every duty held, by one node, and both nodes agree who holds it."""
        seen_a, seen_b = await duties_of(node_a), await duties_of(node_b)
        last[:] = [seen_a, seen_b]
        for duty in DUTIES:
            held = [n for n, seen in (("A", seen_a), ("B", seen_b))
                    if seen.get(duty, {}).get("held")]
            if len(held) != 1 or seen_b.get(duty, {}).get("holder") != held[0] or \
                    seen_a.get(duty, {}).get("holder") != held[0]:
                return False
        return True

    try:
        await until("every duty held by exactly one node", settled)
    except BaseException:
        print("duties seen by A, B:", last, node_a.tail(), node_b.tail(), sep="\n")
        raise
    sms_holder = nodes[await holder_of_duty(node_a, "sms:smpp1") or ""]
    other = node_b if sms_holder is node_a else node_a
    # the callbacks follow the AMI lease (they dial through that node's link)
    pbx_holder = (await node_a.health())["links"]["cluster"]["leases"]["pbx1"]["holder"]
    assert await holder_of_duty(node_a, "callbacks:pbx1") == pbx_holder
    state = await smsc.state()
    assert (state["sessions"], state["binds"]) == (1, 1), "exactly one node binds"
    assert (await other.health())["links"]["smpp:smpp1"]["held_by"] == sms_holder.name

    # An SMS arrives (through the holder's bind); the admin watches from the other node.
    admin = await other.login(*ADMIN)
    desk = Desk(ADMIN[0])
    await desk.connect(other)
    await smsc.acall("POST", "/mo", {"source": CUSTOMER.lstrip("+"), "destination": "CTI",
                                     "text": "Where is my parcel?"})

    async def conversation() -> bool:
        return await sms_conversation_of(db_url, CUSTOMER) is not None

    await until("the MO SMS becoming a conversation", conversation)
    conv_id = await sms_conversation_of(db_url, CUSTOMER)
    breach = await desk.next("sla_breach")  # published on the SLA holder, seen here
    assert breach["conversation_id"] == conv_id and breach["channel"] == "sms"

    # The admin replies through the node that does not bind: the holder sends it.
    status, body = await other.call("POST", f"/api/v1/conversations/{conv_id}/take", admin)
    assert status == 200, body
    status, body = await other.call("POST", f"/api/v1/conversations/{conv_id}/messages", admin,
                                    {"text": "Reply one"})
    assert status == 201, body

    async def submitted(text: str) -> bool:
        return any(s["text"] == text for s in smsc.recorded_submits())

    await until("the reply sent via the other node reaching the SMSC",
                lambda: submitted("Reply one"))

    async def acknowledged() -> bool:  # the holder stored the SMSC's answer
        return await outbox_statuses(db_url) == ["submitted"]

    await until("the holder storing the SMSC's answer", acknowledged)
    assert [s["text"] for s in smsc.recorded_submits()] == ["Reply one"]

    # Kill the SMPP holder; a reply made meanwhile waits in the outbox for the next one.
    if sms_holder is other:  # pragma: no cover - the admin's node must survive
        pytest.fail("the admin's node holds the link")
    sms_holder.kill9()
    killed = time.monotonic()
    status, body = await other.call("POST", f"/api/v1/conversations/{conv_id}/messages", admin,
                                    {"text": "Reply two"})
    assert status == 201, body

    async def rebound() -> bool:
        state = await smsc.state()
        return bool(state["binds"] == 2 and state["sessions"] == 1)

    await until("the surviving node binding the SMPP link", rebound, within=30)
    bound_after = time.monotonic() - killed
    await until("the queued reply sent by the new holder", lambda: submitted("Reply two"),
                within=30)
    sent_after = time.monotonic() - killed
    print(f"\nSMPP failover after kill -9: bound in {bound_after:.1f} s, "
          f"queued reply sent in {sent_after:.1f} s")
    texts = Counter(s["text"] for s in smsc.recorded_submits())
    assert texts == {"Reply one": 1, "Reply two": 1}, smsc.recorded_submits()

    # Every duty is now on the survivor; the breach raised before is not raised again:
    # a second late conversation is raised by the survivor's watch, which saw the first.
    async def survivor_holds_all() -> bool:
        seen = await duties_of(other)
        return all(seen.get(duty, {}).get("held") for duty in DUTIES)

    await until("the survivor holding every duty", survivor_holds_all, within=30)
    await smsc.acall("POST", "/mo", {"source": "79165550102", "destination": "CTI",
                                     "text": "Hello again"})
    second = await desk.next("sla_breach")
    assert second["conversation_id"] != conv_id
    raised = Counter(e.conversation_id for e in await history(db_url, "sla_breached"))
    assert raised == {conv_id: 1, second["conversation_id"]: 1}, raised
    frames = Counter(f["conversation_id"] for f in desk.seen if f.get("type") == "sla_breach")
    assert frames == raised, frames
    await desk.close()

