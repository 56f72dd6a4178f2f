"""``GET /metrics`` of ``cti serve``'s app on the lab Asterisk and the test SMSC.

The AMI link shows up (``cti_pbx_link_up``) with its received-events counter
(``cti_ami_events_total``, read from the link at scrape time); an SMS sent while
the SMSC stays silent is counted in flight on its gateway (``cti_sms_in_flight``,
``cti_sms_queued``), and the other live gauges are there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cti.config import Settings, parse_ami_url, parse_smpp_url
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.pbx import PBX_LINKS
from cti.serve import build_app
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def scrape(client: TestClient[Any, Any]) -> dict[str, float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


async def test_metrics_of_the_ami_and_smpp_links(
    lab_pbx: LabPbx, smsc: Smsc, tmp_path: Path
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}", data_dir=tmp_path,
        secret_key="k", node_id="metrics-node",
        ami=(parse_ami_url(lab_pbx.ami_url),), smpp=(parse_smpp_url(smsc.url()),),
    )
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async def links_up() -> bool:
            m = await scrape(client)
            return (m.get("cti_pbx_link_up{pbx=pbx1}") == 1
                    and m.get("cti_sms_link_up{gateway=smpp1,kind=smpp}") == 1)

        await until("the AMI and SMPP links up in /metrics", links_up)
        link = app[PBX_LINKS].links["pbx1"]
        m = await scrape(client)
        events = m["cti_ami_events_total{pbx=pbx1}"]
        if hasattr(link, "events_received"):
            assert events >= 1 and events <= link.events_received, (events, m)
        else:  # pbx.link has no counter yet: the metric is there, at 0
            assert events == 0
        assert m["cti_sms_queued{gateway=smpp1,kind=smpp}"] == 0
        assert m["cti_sms_in_flight{gateway=smpp1}"] == 0
        assert m["cti_ws_agents{}"] == 0 and m["cti_node_info{node_id=metrics-node}"] == 1
        assert "cti_screen_pop_seconds_count{}" in m

        await smsc.configure(silent=True)  # submit_sm gets no response: the part stays out
        services = app[SERVICES]
        conv = await services.inbox.receive("sms", "+79160000077", "Where is my order?")
        await services.conversations.outbound.send("sms", "+79160000077", "On its way", conv.id)

        async def counted() -> bool:
            m = await scrape(client)
            return (m["cti_sms_in_flight{gateway=smpp1}"]
                    + m["cti_sms_queued{gateway=smpp1,kind=smpp}"]) >= 1

        await until("the unanswered SMS counted on its gateway", counted, 30)
    finally:
        await smsc.configure(silent=False)
        await client.close()
