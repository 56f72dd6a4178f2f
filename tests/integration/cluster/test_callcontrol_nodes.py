"""Call control through the node that does NOT hold the AMI link (issue 10: "behave as one").

Two ``cti serve`` nodes on the lab Asterisk: A holds pbx1's AMI link, B does
not. Everything is posted to B, which forwards it to A over the live channel:

- agent2 pauses (with a reason) and unpauses: Asterisk's ``queue show`` and
  A's live tracker show it; ``GET /api/v1/agents/me/status`` on B gives the
  same JSON as on A;
- a SIPp caller waits in sales: agent1 may not hang it up (403 from A's
  check, returned unchanged), a supervisor hangs it up through B: the call
  ends on the PBX;
- Redis stopped: B answers 503 ``pbx_unavailable`` saying why.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cti.lab import LabPbx
from cti.links.pbx import ami_url
from tests.integration.cluster.conftest import OwnRedis
from tests.integration.cluster.nodes import ADMIN, Node, node_env, until
from tests.integration.cluster.test_two_nodes import fresh_database
from tests.peers.ports import free_port
from tests.peers.sipp import caller_call

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
async def two_nodes(postgres_url: str, own_redis: OwnRedis, lab_pbx: LabPbx,
                    tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    db_url = fresh_database(postgres_url)
    ami = ami_url(lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user, lab_pbx.ami_secret)
    started: list[Node] = []

    def make(name: str) -> Node:
        port = free_port()
        node = Node(name, port, node_env(name, port, db_url, own_redis.url, ami),
                    tmp_path / f"node-{name}.log")
        started.append(node)
        node.start()
        return node

    try:
        node_a = make("A")
        await node_a.wait_ready()

        async def a_holds_the_link() -> bool:
            links = (await node_a.health())["links"]
            return links["cluster"]["holds"] == ["pbx1"] and bool(links["pbx:pbx1"]["up"])

        await until("node A holding pbx1", a_holds_the_link)
        node_b = make("B")
        await node_b.wait_ready()
        assert (await node_b.health())["links"]["cluster"]["holds"] == []
        yield node_a, node_b
    finally:
        for node in started:
            await node.close()


def member_line(lab_pbx: LabPbx, queue: str, interface: str) -> str:
    out = lab_pbx.cli(f"queue show {queue}")
    return next((line for line in out.splitlines() if f"({interface})" in line
                 or line.strip().startswith(interface)), "")


async def test_call_control_through_the_node_without_the_link(
    two_nodes: tuple[Node, Node], own_redis: OwnRedis, lab_pbx: LabPbx, tmp_path: Path,
) -> None:
    node_a, node_b = two_nodes
    admin = await node_a.login(*ADMIN)  # tokens are signed with the cluster's secret
    for login, role, endpoint in (("agent1", "agent", "PJSIP/agent1"),
                                  ("agent2", "agent", "PJSIP/agent2"),
                                  ("sup", "supervisor", "PJSIP/agent4")):
        status, body = await node_a.call("POST", "/api/v1/agents", admin, {
            "login": login, "password": f"{login}-password", "name": login, "role": role,
            "endpoint": endpoint})
        assert status == 201, body
    agent1 = await node_b.login("agent1", "agent1-password")
    agent2 = await node_b.login("agent2", "agent2-password")
    sup = await node_b.login("sup", "sup-password")

    # -- pause / unpause posted to B -----------------------------------------------
    async def status_on(node: Node) -> dict[str, Any]:
        status, body = await node.call("GET", "/api/v1/agents/me/status", agent2)
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    try:
        status, body = await node_b.call("POST", "/api/v1/agents/me/pause", agent2,
                                         {"paused": True, "reason": "lunch", "queue": "support"})
        assert status == 200, body
        assert body == {"endpoint": "PJSIP/agent2", "paused": True, "reason": "lunch",
                        "queue": "support", "pbx": ["pbx1"]}
        assert "paused" in member_line(lab_pbx, "support", "PJSIP/agent2")

        async def paused_on_a() -> bool:
            on_a = await status_on(node_a)
            return bool(on_a["paused"]) and on_a["reason"] == "lunch"

        await until("A's tracker showing agent2 paused", paused_on_a, 20)
        on_a, on_b = await status_on(node_a), await status_on(node_b)
        assert on_b == on_a, (on_a, on_b)
        assert on_b["pbx"] == ["pbx1"] and on_b["queues"][0]["queue"] == "support", on_b

        status, body = await node_b.call("POST", "/api/v1/agents/me/pause", agent2,
                                         {"paused": False})
        assert status == 200 and body["pbx"] == ["pbx1"], body
        assert "paused" not in member_line(lab_pbx, "support", "PJSIP/agent2")

        async def unpaused_on_b() -> bool:
            return not (await status_on(node_b))["paused"]

        await until("B showing agent2 available", unpaused_on_b, 20)
        assert await status_on(node_b) == await status_on(node_a)
        # Figures, not assertions: an (idempotent) unpause through A (local) vs B (forwarded).
        took: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(5):
            for node in (node_a, node_b):
                started = time.perf_counter()
                status, body = await node.call("POST", "/api/v1/agents/me/pause", agent2,
                                               {"paused": False, "queue": "support"})
                took[node.name].append(time.perf_counter() - started)
                assert status == 200, body
        med = {name: sorted(v)[2] * 1000 for name, v in took.items()}
        print(f"unpause POST -> 200: via A (holder) {med['A']:.1f} ms, via B (forwarded) "
              f"{med['B']:.1f} ms (median of 5; ratio {med['B'] / med['A']:.1f})")
    finally:
        lab_pbx.cli("queue unpause member PJSIP/agent2")

    # -- hang up a real call through B ---------------------------------------------
    caller = caller_call(lab_pbx, tmp_path / "sipp", number="200", caller_number="+79160000031",
                         caller_name="Caller", hangup_after=None, timeout=90)
    try:
        channel = ""

        async def the_call_on_the_pbx() -> bool:
            nonlocal channel
            out = lab_pbx.cli("core show channels concise")
            channel = next((line.split("!")[0] for line in out.splitlines()
                            if line.startswith("PJSIP/") and "!Queue!" in line), "")
            return bool(channel)

        await until("the caller queued in sales", the_call_on_the_pbx, 30)
        details = lab_pbx.cli(f"core show channel {channel}")
        match = re.search(r"LinkedID:\s*(\S+)", details)
        assert match, details
        call_id = f"pbx1:{match.group(1)}"
        status, body = await node_b.call("POST", f"/api/v1/calls/{call_id}/hangup", agent1)
        assert status == 403 and body["error"]["code"] == "forbidden", body  # A's check
        status, body = await node_b.call("POST", f"/api/v1/calls/{call_id}/hangup", sup)
        assert status == 200 and body["call_id"] == call_id and body["hung_up"] >= 1, body
        await caller.wait_async(30)  # the PBX's BYE ended SIPp's call

        async def no_channel_left() -> bool:
            return channel not in lab_pbx.cli("core show channels concise")

        await until("the call gone from the PBX", no_channel_left, 20)
    finally:
        caller.stop()

    # -- Redis stopped: B cannot reach the holder, says so -------------------------
    await asyncio.to_thread(own_redis.stop)
    try:
        started = time.monotonic()
        status, body = await node_b.call("POST", "/api/v1/agents/me/pause", agent2,
                                         {"paused": True})
        elapsed = time.monotonic() - started
        assert status == 503 and body["error"]["code"] == "pbx_unavailable", body
        assert "Redis" in body["error"]["message"], body
        print(f"pause on B with Redis stopped: 503 in {elapsed * 1000:.0f} ms")  # a figure
    finally:
        await asyncio.to_thread(own_redis.start)  # the nodes then stop at once
