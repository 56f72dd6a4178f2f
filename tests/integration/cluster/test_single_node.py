"""Single-node mode (no Redis): local hub, no leases, and /metrics works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cti.cluster.hub import ClusterHub
from cti.cluster.node import LEASES
from cti.config import Settings
from cti.keys import SERVICES
from cti.serve import build_app


async def test_single_node_has_no_cluster_parts_and_serves_metrics(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                        data_dir=tmp_path, secret_key="k", node_id="solo")
    app = build_app(settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert not isinstance(app[SERVICES].hub, ClusterHub) and LEASES not in app
        health = await (await client.get("/api/v1/health")).json()
        assert "cluster" not in health["links"]
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.content_type.startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(await resp.text())}
        assert {"cti_ws_agents", "cti_screen_pop_seconds", "cti_node_info"} <= names, names
        assert "cti_bus_up" not in names
    finally:
        await client.close()
