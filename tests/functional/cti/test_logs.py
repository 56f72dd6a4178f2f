"""Structured logs: JSON lines with the node and correlation ids, secrets redacted.

In-process: the real app (``create_app`` on SQLite) with a handler that logs and
one that fails, reached by real HTTP requests: the lines carry ``conv:<id>`` /
``req:<X-Request-Id>``, the exception as a string, no password. As a process:
``cti serve`` with ``CTI_LOG_FORMAT=json`` writes only JSON lines on stderr and
never its AMI password; a bad format setting is a clear error.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.config import ConfigError, Settings, load_settings, parse_ami_url
from cti.links.ivr import correlated
from cti.logs import LogContext, configure_logging, correlate, redact
from ivr.ports import IvrPorts
from ivr.reference_ports import MemoryPorts
from ivr.server import FastAgiServer, FastAgiSettings
from ivr.session import AgiSession
from tests.peers.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
CTI = ROOT / ".venv" / "bin" / "cti"
SECRET = "Tr0ub4dor-and-3"
log = logging.getLogger("cti.test_logs")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("DEBUG", "json", "node-t", stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_redact_urls_and_key_values() -> None:
    cases = {
        f"ami://cti:{SECRET}@10.0.0.5:5038": "ami://cti:***@10.0.0.5:5038",
        f"smpp://esme:{SECRET}@smsc:2775?tps=5": "smpp://esme:***@smsc:2775?tps=5",
        f"redis://:{SECRET}@redis:6379/0": "redis://:***@redis:6379/0",
        f"postgresql+asyncpg://cti:{SECRET}@db/cti": "postgresql+asyncpg://cti:***@db/cti",
        f"{{'password': '{SECRET} x', 'login': 'bob'}}": "{'password': '***', 'login': 'bob'}",
        f"Action: Login\r\nSecret: {SECRET}\r\n": "Action: Login\r\nSecret: ***\r\n",
        f'{{"token": "{SECRET}"}}': '{"token": "***"}',
        f"Authorization: Bearer {SECRET}": "Authorization: Bearer ***",
        "http://host:8080/path@x?q=1": "http://host:8080/path@x?q=1",
        "agent1 took conversation 12": "agent1 took conversation 12",
        "GET /c/AQAAAAAADGsFqmho4Xgzvod5sj0BVwld9mbu5byB-AE failed": "GET /c/*** failed",
        "ws /api/v1/chat/AQAAAAAADGsFqmho4Xgz/ws": "ws /api/v1/chat/***/ws",
        "GET /api/v1/conversations/12/messages": "GET /api/v1/conversations/12/messages",
    }
    for raw, want in cases.items():
        assert redact(raw) == want, raw


def test_text_format_redacts_and_shows_the_correlation_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(LogContext("n"))
    handler.setFormatter(logging.Formatter("%(levelname)s%(correlation)s %(message)s"))
    logger = logging.getLogger("cti.test_logs.text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with correlate("call:pbx1:1700000000.1"):
            logger.warning("link %s down", f"ami://cti:{SECRET}@pbx:5038")
        try:
            raise OSError(f"connect redis://:{SECRET}@127.0.0.1:1 refused")
        except OSError:
            logger.exception("outside any call")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert "WARNING [call:pbx1:1700000000.1] link ami://cti:***@pbx:5038 down" in text
    assert "ERROR outside any call\nTraceback" in text and "redis://:***@127.0.0.1:1" in text
    assert SECRET not in text


async def test_http_requests_carry_their_correlation_id(
    json_log: io.StringIO, tmp_path: Path
) -> None:
    async def noisy(request: web.Request) -> web.Response:
        log.info("looked at conversation %s with password=%s", request.match_info["id"], SECRET)
        log.info("malformed %s %s", "only one argument")
        return web.json_response({})

    async def failing(request: web.Request) -> web.Response:
        raise RuntimeError(f"db at postgresql+asyncpg://cti:{SECRET}@db/cti went away")

    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
                        data_dir=tmp_path, secret_key="k", node_id="node-t")
    app = create_app(settings)
    app.router.add_get("/api/v1/conversations/{id}/noisy", noisy)
    app.router.add_get("/test/failing", failing)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.get("/api/v1/conversations/42/noisy")
        assert resp.status == 200 and resp.headers["X-Request-Id"]
        resp = await client.get("/test/failing", headers={"X-Request-Id": "lb-7f3a"})
        assert resp.status == 500 and resp.headers["X-Request-Id"] == "lb-7f3a"
        resp = await client.get("/test/failing", headers={"X-Request-Id": "bad id <>"})
        assert resp.status == 500 and resp.headers["X-Request-Id"] != "bad id <>"
        generated = resp.headers["X-Request-Id"]
        resp = await client.get("/api/v1/health/cluster")
        body = await resp.json()
        assert body["mode"] == "single" and [n["node_id"] for n in body["nodes"]] == ["node-t"]
    finally:
        await client.close()
    lines = lines_of(json_log)
    assert SECRET not in json_log.getvalue()
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message", "node_id", "correlation_id"}
        assert line["time"].endswith("Z") and line["node_id"] == "node-t"
    ours = [line for line in lines if line["logger"] == "cti.test_logs"]
    assert [line["correlation_id"] for line in ours] == ["conv:42", "conv:42"]
    assert ours[0]["message"] == "looked at conversation 42 with password=***"
    assert "malformed" in ours[1]["message"] and "bad log call" in ours[1]["message"]
    failures = [line for line in lines if line["logger"] == "cti.app"]
    assert [line["correlation_id"] for line in failures] == ["req:lb-7f3a", f"req:{generated}"]
    assert failures[0]["level"] == "ERROR"
    assert "RuntimeError: db at postgresql+asyncpg://cti:***@db/cti" in failures[0]["exc_info"]


async def test_ivr_sessions_carry_their_call_id(json_log: io.StringIO) -> None:
    """Two AGI sessions over loopback TCP: each flow's lines and the server's log of the
    failed one carry ``call:<pbx>:<Uniqueid>`` of their own call."""

    async def flow(session: AgiSession, ports: IvrPorts) -> None:
        log.info("IVR flow for %s", session.environment.caller_number)
        if session.environment.uniqueid.endswith(".2"):
            raise RuntimeError("a broken flow")

    settings = Settings(ami=(parse_ami_url("ami://cti:x@127.0.0.1:5038"),))
    server = FastAgiServer(FastAgiSettings(host="127.0.0.1", port=0),
                           correlated({"probe": flow}, settings), MemoryPorts().ports())
    await server.start()
    try:
        peers = []
        for n in (1, 2):
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(f"agi_network: yes\nagi_network_script: probe\n"
                         f"agi_uniqueid: 1700000000.{n}\nagi_callerid: 7916000000{n}\n\n"
                         .encode())
            peers.append((reader, writer))
        for reader, writer in peers:
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # the session ended: the server closed
            writer.close()
    finally:
        await server.close()
    lines = [(line["logger"], line["message"], line["correlation_id"])
             for line in lines_of(json_log) if line["logger"] in ("cti.test_logs", "ivr.server")]
    assert ("cti.test_logs", "IVR flow for 79160000001", "call:pbx1:1700000000.1") in lines
    assert ("cti.test_logs", "IVR flow for 79160000002", "call:pbx1:1700000000.2") in lines
    failed = [line for line in lines_of(json_log) if line["message"].endswith("flow failed")]
    assert [line["correlation_id"] for line in failed] == ["call:pbx1:1700000000.2"]
    assert "RuntimeError: a broken flow" in failed[0]["exc_info"]


def test_log_settings_from_env_and_file(tmp_path: Path) -> None:
    assert load_settings(environ={}).log_format == "text"
    s = load_settings(environ={"CTI_LOG_FORMAT": "JSON", "CTI_LOG_LEVEL": "debug"})
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    conf = tmp_path / "cti.toml"
    conf.write_text('[logging]\nformat = "json"\nlevel = "WARNING"\n')
    s = load_settings(conf, environ={})
    assert (s.log_format, s.log_level) == ("json", "WARNING")
    with pytest.raises(ConfigError, match="CTI_LOG_FORMAT: one of text, json"):
        load_settings(environ={"CTI_LOG_FORMAT": "xml"})
    conf.write_text('[logging]\nlevel = "LOUD"\n')
    with pytest.raises(ConfigError, match=r"logging\.level"):
        load_settings(conf, environ={})


def start_serve(env: dict[str, str], err: Path) -> subprocess.Popen[bytes]:
    with err.open("wb") as out:
        return subprocess.Popen([str(CTI), "serve"], env=env, cwd=err.parent,
                                stdout=subprocess.DEVNULL, stderr=out)


async def test_cti_serve_writes_json_lines_without_secrets(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens: the AMI link fails and logs it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTI_")}
    env.update({
        "CTI_NODE_ID": "json-node",
        "CTI_HTTP_LISTEN": f"127.0.0.1:{port}",
        "CTI_DATA_DIR": str(tmp_path),
        "CTI_SECRET_KEY": "k",
        "CTI_AMI_URL": f"ami://cti:{SECRET}@127.0.0.1:{dead}",
        "CTI_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    err = tmp_path / "stderr"
    proc = start_serve(env, err)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, err.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/v1/conversations/5",
                                        headers={"X-Request-Id": "probe-1"}) as resp:
                        assert resp.status == 401
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, err.read_text()
                    await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = err.read_text()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert lines, "cti serve logged nothing at INFO"
    assert {line["node_id"] for line in lines} == {"json-node"}
    assert any(line["logger"].startswith("pbx") for line in lines), text[-2000:]

