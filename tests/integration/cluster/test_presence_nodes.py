"""Agent status across nodes: two PBXes, each AMI link on its own node (real Redis,
PostgreSQL and two lab Asterisks).

Node A runs the link to ``east`` (the shared lab PBX), node B the link to ``west``
(a private one); agent4 is a member of ``sales`` on both. A pause on one PBX
reaches only its holder, whose ``agent_status`` frame must still carry the
memberships of both PBXes (it asks the other node over the live channel), and
the text availability must follow the pause in every queue of the cluster. With
node B gone the frame comes at once, partial (``unavailable: ["west"]``), and a
partial "paused" does not take text work away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from cti.app import create_app
from cti.auth import Role
from cti.cluster.hub import ClusterHub
from cti.config import AmiServer, Settings
from cti.desk_api import setup_desk_api
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.callcontrol import setup_call_control
from cti.links.ivr import setup_ivr
from cti.links.pbx import PBX_LINKS, ami_url, setup_pbx_links
from cti.models import Agent
from cti.presence import PRESENCE
from pbx.actions import PbxError
from pbx.link import AmiLink, LinkSettings
from tests.integration.cluster.nodes import until
from tests.peers.databases import _createdb

pytestmark = pytest.mark.integration
AGENT = "PJSIP/agent4"  # in sales on both lab PBXes; not used by the other lab tests
FAST = LinkSettings(ping_interval=1.0, ping_timeout=3.0, backoff_min=0.2, backoff_max=1.0)


@dataclass
class Node:
    name: str
    app: web.Application
    client: TestClient[Any, Any]
    link: AmiLink

    @property
    def hub(self) -> ClusterHub:
        hub = self.app[SERVICES].hub
        assert isinstance(hub, ClusterHub)
        return hub


def _server(name: str, pbx: LabPbx) -> AmiServer:
    return AmiServer(name, pbx.host, pbx.ami_port, pbx.ami_user, pbx.ami_secret)


async def _node(name: str, pbx_name: str, pbxs: dict[str, LabPbx], db_url: str,
                redis_url: str, tmp_path: Path) -> Node:
    settings = Settings(
        db_url=db_url, data_dir=tmp_path / name, secret_key="test-secret",
        redis_url=redis_url, node_id=f"presence-{name}-{os.getpid()}",
        ami=tuple(_server(n, p) for n, p in pbxs.items()),
    )
    (tmp_path / name).mkdir()
    app = create_app(settings)
    setup_pbx_links(app, FAST)  # cluster mode: no link at start; this node's is added below
    setup_call_control(app)  # answers the other nodes' status questions
    setup_desk_api(app)  # cti.presence
    setup_ivr(app)  # the text availability follower (no AGI listener)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    pbx = pbxs[pbx_name]
    link = await app[PBX_LINKS].add(app[SERVICES], pbx_name,
                                    ami_url(pbx.host, pbx.ami_port, pbx.ami_user, pbx.ami_secret))
    return Node(name, app, client, link)


def _sales_member(link: AmiLink) -> Any:
    queue = link.queue("sales")
    return next((m for m in queue.members if m.interface == AGENT), None) if queue else None


async def _in_sales(link: AmiLink) -> bool:
    return _sales_member(link) is not None


async def _frames(sub: Any, pbx: str, paused: bool, within: float = 15.0) -> dict[str, Any]:
    """The next agent_status frame for a pause change on ``pbx`` (frames of the links'
    start-up resync may still come first: skipped)."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no agent_status frame for {pbx} paused={paused}"
        async with asyncio.timeout(left):
            msg = json.loads(await sub.queue.get())
        changed = msg.get("changed") or {}
        if msg.get("type") == "agent_status" and (changed.get("pbx"),
                                                  changed.get("paused")) == (pbx, paused):
            return dict(msg)


@pytest.fixture
async def nodes(
    postgres_url: str, redis_url: str, lab_pbx: LabPbx,
    lab_pbx_factory: Callable[..., LabPbx], tmp_path: Path,
) -> AsyncIterator[tuple[Node, Node]]:
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    name = f"presence{os.getpid()}"
    _createdb(port, name)
    db_url = postgres_url.rsplit("/", 1)[0] + "/" + name
    pbxs = {"east": lab_pbx, "west": lab_pbx_factory()}
    started: list[Node] = []
    try:
        started.append(await _node("A", "east", pbxs, db_url, redis_url, tmp_path))
        started.append(await _node("B", "west", pbxs, db_url, redis_url, tmp_path))
        node_a, node_b = started
        for node in started:
            await node.link.wait_up(30)
            await until(f"agent4 in sales on {node.name}'s PBX",
                        functools.partial(_in_sales, node.link), within=30)
            if _sales_member(node.link).paused:  # a leftover: start available everywhere
                await node.link.queue_pause(AGENT, False, "sales")
        await until("both nodes on the live channel",
                    lambda: _ready(node_a.hub.live_subscribed and node_b.hub.live_subscribed),
                    within=20)
        yield node_a, node_b
    finally:
        for node in started:
            with contextlib.suppress(PbxError):
                await node.link.queue_pause(AGENT, False, "sales")
        for node in reversed(started):
            await node.client.close()


async def _ready(value: object) -> bool:
    return value is not None and value is not False


async def _available(node: Node) -> bool:
    async with node.app[SERVICES].sessions() as session:
        return bool(await session.scalar(select(Agent.available).where(Agent.endpoint == AGENT)))


async def test_agent_status_frame_merges_every_pbx_of_the_cluster(
    nodes: tuple[Node, Node],
) -> None:
    node_a, node_b = nodes
    services = node_a.app[SERVICES]
    agent = await services.agents.create("agent4", "agent4-password", name="Agent Four",
                                         role=Role.AGENT, endpoint=AGENT)
    desk = node_b.app[SERVICES].hub.subscribe(agent.id, None)  # the desk is on node B

    # Pause on east: only node A sees it; its frame carries west's membership too.
    asked = time.monotonic()
    await node_a.link.queue_pause(AGENT, True, "sales", "lunch")
    frame = await _frames(desk, "east", True)
    print(f"\nmerged agent_status frame {time.monotonic() - asked:.2f} s after the pause")
    assert sorted((q["pbx"], q["queue"], q["paused"]) for q in frame["queues"]) == [
        ("east", "sales", True), ("west", "sales", False)], frame
    assert sorted(frame["pbx"]) == ["east", "west"] and "unavailable" not in frame
    assert (frame["paused"], frame["changed"]["pbx"]) == (False, "east")
    assert await _available(node_a), "still available: unpaused on west"

    # Pause on west too (node B's frame): paused everywhere, no text work.
    await node_b.link.queue_pause(AGENT, True, "sales", "lunch")
    frame = await _frames(desk, "west", True)
    assert (frame["paused"], frame["reason"], frame["changed"]["pbx"]) == (True, "lunch", "west")
    assert len(frame["queues"]) == 2 and "unavailable" not in frame
    await until("the agent out of text work", lambda: _negate(_available(node_a)), within=30)

    # Node B goes away: A's frames come at once, partial; an unpause is applied...
    desk = node_a.app[SERVICES].hub.subscribe(agent.id, None)
    await node_b.client.close()
    started = time.monotonic()
    await node_a.link.queue_pause(AGENT, False, "sales")
    frame = await _frames(desk, "east", False)
    print(f"\npartial agent_status frame {time.monotonic() - started:.2f} s after the pause")
    assert (frame["paused"], frame["unavailable"]) == (False, ["west"]), frame
    await until("the agent back to text work", lambda: _available(node_a), within=30)
    # ...a partial "paused" is not (west, silent, may hold an unpaused membership).
    await node_a.link.queue_pause(AGENT, True, "sales", "meeting")
    frame = await _frames(desk, "east", True)
    assert (frame["paused"], frame["unavailable"]) == (True, ["west"]), frame
    presence = node_a.app[PRESENCE]
    assert presence.published >= 2
    assert await _available(node_a)


async def _negate(value: Any) -> bool:
    return not await value
