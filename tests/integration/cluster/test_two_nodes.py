"""Two ``cti serve`` nodes on one PostgreSQL and one Redis behave as one server.

``test_pop_race_and_failover``: node A holds the AMI lease of a private lab
PBX; agent1's desk is on A, agent2's on B. Both agents race for one SMS
conversation (one 200, one 409). A SIPp call to queue support pops on agent2's
desk on B (the change was seen by A). While agent2 talks, A is killed with
SIGKILL: B takes the lease over, resyncs, agent1 reconnects to B and resumes by
seq (a pop published while it was away arrives once), B hangs the call up and
the call's history holds offered, answered and ended exactly once each.

(Redis stopped for 10 s while both nodes run is in ``test_ops``, on its pair.)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cti.config import Settings
from cti.lab import LabPbx, LabQueue
from cti.links.pbx import ami_url
from cti.services import Services
from tests.integration.cluster.conftest import OwnRedis
from tests.integration.cluster.nodes import (
    ADMIN,
    SECRET,
    Desk,
    Node,
    close_all,
    node_env,
    start_pair,
    until,
)
from tests.peers.databases import _createdb
from tests.peers.ports import free_port
from tests.peers.sipp import agent_answering, caller_call

pytestmark = pytest.mark.integration
_dbs = itertools.count(1)
TAKEOVER_LIMIT = 20.0  # lease TTL 5 s + renew tick + AMI login and resync, on a loaded box


def fresh_database(postgres_url: str) -> str:
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    name = f"cluster{os.getpid()}_{next(_dbs)}"
    _createdb(port, name)
    return postgres_url.rsplit("/", 1)[0] + "/" + name


async def sms_conversation(db_url: str, sender: str, text: str) -> int:
    """An inbound SMS as the SMPP link records it (TextInbox.receive) in the shared database."""
    services = Services(Settings(db_url=db_url, secret_key=SECRET))
    await services.start()
    try:
        conv = await services.inbox.receive("sms", sender, text)
        return conv.id
    finally:
        await services.stop()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Callable[..., Node]]:
    started: list[Node] = []

    def make(name: str, db_url: str, redis_url: str, ami: str | None = None,
             start: bool = True) -> Node:
        port = free_port()
        node = Node(name, port, node_env(name, port, db_url, redis_url, ami),
                    tmp_path / f"node-{name}.log")
        started.append(node)
        if start:
            node.start()
        return node

    yield make
    await close_all(started)


async def seed_agents(node: Node) -> None:
    admin = await node.login(*ADMIN)
    for login, queues in (("agent1", []), ("agent2", ["support"])):
        status, body = await node.call("POST", "/api/v1/agents", admin, {
            "login": login, "password": f"{login}-password", "name": login,
            "endpoint": f"PJSIP/{login}", "queues": queues,
        })
        assert status == 201, body


async def holder_of(node: Node) -> str | None:
    cluster = (await node.health())["links"]["cluster"]
    lease = cluster.get("leases", {}).get("pbx1", {})
    holder: str | None = lease.get("holder")
    return holder


async def test_pop_race_and_failover(
    postgres_url: str, own_redis: OwnRedis, lab_pbx_factory: Callable[..., LabPbx],
    nodes: Callable[..., Node], tmp_path: Path,
) -> None:
    lab = lab_pbx_factory(queues=[LabQueue("support", "100", ("agent2",))])
    db_url = fresh_database(postgres_url)
    ami = ami_url(lab.host, lab.ami_port, lab.ami_user, lab.ami_secret)
    node_a = nodes("A", db_url, own_redis.url, ami, start=False)
    node_b = nodes("B", db_url, own_redis.url, ami, start=False)

    async def a_holds_the_link() -> bool:
        links = (await node_a.health())["links"]
        return links["cluster"]["holds"] == ["pbx1"] and bool(links["pbx:pbx1"]["up"])

    # B imports meanwhile; it serves once A holds the link.
    await start_pair(node_a, node_b, db_url, a_first=a_holds_the_link,
                     what="node A holding pbx1 with its AMI link up")
    assert await holder_of(node_b) == "A"
    b_links = (await node_b.health())["links"]
    assert b_links["cluster"]["holds"] == [] and b_links["pbx:pbx1"]["held_by"] == "A"

    await seed_agents(node_a)
    await node_a.login("agent1", "agent1-password")
    await node_b.login("agent1", "agent1-password")
    await node_b.login("agent2", "agent2-password")
    desk1, desk2 = Desk("agent1"), Desk("agent2")
    await desk1.connect(node_a)
    await desk2.connect(node_b)
    assert desk1.hello["epoch"] == desk2.hello["epoch"], "one cluster epoch on both nodes"

    # Both agents race for one SMS conversation through different nodes: one wins.
    first = await sms_conversation(db_url, "+79160000001", "Здравствуйте, вопрос по счёту")
    race = await asyncio.gather(
        node_a.call("POST", f"/api/v1/conversations/{first}/take", node_a.tokens["agent1"]),
        node_b.call("POST", f"/api/v1/conversations/{first}/take", node_b.tokens["agent2"]),
    )
    assert sorted(status for status, _ in race) == [200, 409], race
    winner = "agent1" if race[0][0] == 200 else "agent2"
    loser_body = race[1][1] if winner == "agent1" else race[0][1]
    assert loser_body["error"]["details"]["owner"] == winner, loser_body
    status, body = await node_b.call("GET", f"/api/v1/conversations/{first}",
                                     node_b.tokens["agent2"])
    assert status == 200 and body["owner_login"] == winner, body

    # A call offered to agent2 pops on node B while node A holds the AMI link.
    phone = agent_answering(lab, tmp_path / "sipp", "agent2", ring=1.0, timeout=150)
    caller = caller_call(lab, tmp_path / "sipp", number="100", caller_number="+79161234567",
                         caller_name="Иван Петров", hangup_after=None, timeout=150)
    try:
        while True:
            pop = await desk2.next("screen_pop")
            if pop["channel"] == "voice":
                break
        customer_id = pop["customer"]["id"]
        answered = await desk2.next("call_answered")
        call_id, conversation_id = answered["call_id"], answered["conversation_id"]
        assert conversation_id == pop["conversation"]["id"]

        async def pop_measured() -> bool:
            a_metrics = await node_a.metrics()
            return a_metrics.get("cti_screen_pop_seconds_count{}", 0) >= 1

        await until("the screen-pop latency observed on A", pop_measured, 10)
        b_metrics = await node_b.metrics()
        assert b_metrics["cti_bus_delivery_seconds_count{type=screen_pop}"] >= 1, b_metrics
        assert b_metrics["cti_ws_agents{}"] == 1 and b_metrics["cti_bus_up{}"] == 1

        # kill -9 the lease holder in the middle of the call.
        node_a.kill9()
        killed = time.monotonic()

        async def b_took_over() -> bool:
            links = (await node_b.health())["links"]
            return links["cluster"]["holds"] == ["pbx1"] and bool(links["pbx:pbx1"]["up"])

        await until("node B holding pbx1 after A was killed", b_took_over, TAKEOVER_LIMIT)
        takeover = time.monotonic() - killed
        print(f"AMI lease takeover after kill -9: {takeover:.1f} s")

        # While agent1's desk is away, a pop for agent1 is published (on B).
        second = await sms_conversation(db_url, "+79160000002", "Second")
        admin = await node_b.login(*ADMIN)
        status, body = await node_b.call(
            "POST", f"/api/v1/conversations/{second}/transfer", admin, {"agent": "agent1"})
        assert status == 200, body
        before = desk1.last_seq
        await desk1.connect(node_b)  # resumes with last_seq; Desk.next checks seq increases
        resumed = await desk1.next("screen_pop")
        assert resumed["conversation"]["id"] == second and resumed["seq"] > (before or 0)

        status, body = await node_b.call(
            "POST", f"/api/v1/calls/{call_id}/hangup", node_b.tokens["agent2"])
        assert status == 200, body
        ended = await desk2.next("call_ended")
        assert ended["conversation_id"] == conversation_id

        kinds: Counter[str] = Counter()

        async def history_complete() -> bool:
            status, body = await node_b.call(
                "GET", f"/api/v1/customers/{customer_id}/history?limit=200",
                node_b.tokens["agent2"])
            assert status == 200, body
            kinds.clear()
            kinds.update(ev["kind"] for ev in body["events"]
                         if ev["conversation_id"] == conversation_id)
            return "call_ended" in kinds

        await until("call_ended in the history", history_complete)
        for kind in ("call_offered", "call_answered", "call_ended"):
            assert kinds[kind] == 1, kinds
        result = await caller.wait_async(40)
        assert result.successful_calls == 1, result
    finally:
        caller.stop()
        phone.stop()
        await desk1.close()
        await desk2.close()
