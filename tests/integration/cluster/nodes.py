"""Two-node helpers: ``cti serve`` subprocesses sharing PostgreSQL and Redis, and their APIs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[3]
CTI = ROOT / ".venv" / "bin" / "cti"
TIMEOUT = 60.0
ADMIN = ("admin", "admin-password-1")
SECRET = "cluster-test-secret"


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Node:
    """One ``cti serve`` process (stopped by its PID) and an HTTP session to it."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    http: aiohttp.ClientSession | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not CTI.exists():
            pytest.fail(f"{CTI} is missing: install the project into .venv (pip install -e .)")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(CTI), "serve", "--log-level", "INFO"], env=self.env, cwd=self.log.parent,
                stdout=out, stderr=subprocess.STDOUT,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession(self.url)
        return self.http

    async def health(self) -> dict[str, Any]:
        http = await self.session()
        async with http.get("/api/v1/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                body = await self.health()
            except (aiohttp.ClientError, TimeoutError):
                return False
            return bool(body["links"].get("cluster", {}).get("up"))

        await until(f"node {self.name} ready", ready)

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` samples as {"name{label=value,...}": value}."""
        http = await self.session()
        async with http.get("/metrics") as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
        return out

    async def login(self, login: str, password: str) -> str:
        http = await self.session()
        async with http.post("/api/v1/auth/token",
                             json={"login": login, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            token: str = (await resp.json())["token"]
        self.tokens[login] = token
        return token

    async def call(self, method: str, path: str, token: str,
                   body: dict[str, Any] | None = None) -> tuple[int, Any]:
        http = await self.session()
        async with http.request(method, path, json=body,
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.stop()


def node_env(name: str, port: int, db_url: str, redis_url: str,
             ami_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTI_")}
    env.update({
        "CTI_NODE_ID": name,
        "CTI_HTTP_LISTEN": f"127.0.0.1:{port}",
        "CTI_DB_URL": db_url,
        "CTI_REDIS_URL": redis_url,
        "CTI_SECRET_KEY": SECRET,
        "CTI_BOOTSTRAP_ADMIN": f"{ADMIN[0]}:{ADMIN[1]}",
        "PYTHONUNBUFFERED": "1",
    })
    if ami_url is not None:
        env["CTI_AMI_URL"] = ami_url
    return env


class Desk:
    """One agent's WebSocket on one node; remembers the last seq it saw."""

    def __init__(self, login: str) -> None:
        self.login = login
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.last_seq: int | None = None
        self.seen: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}

    async def connect(self, node: Node) -> None:
        http = await node.session()
        params = {"token": node.tokens[self.login]}
        if self.last_seq is not None:
            params["last_seq"] = str(self.last_seq)
        self.ws = await http.ws_connect("/api/v1/events", params=params)
        self.hello = await self.next("hello")
        if self.last_seq is None:  # a fresh desk starts from the node's current seq
            self.last_seq = int(self.hello["last_seq"])

    async def next(self, kind: str, within: float = TIMEOUT) -> dict[str, Any]:
        assert self.ws is not None
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{self.login}: no {kind!r} frame within {within:g} s; "
                            f"saw {[m.get('type') for m in self.seen]}")
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                pytest.fail(f"{self.login}: socket ended ({msg.type}) waiting for {kind!r}")
            data: dict[str, Any] = json.loads(msg.data)
            if "seq" in data:
                assert self.last_seq is None or data["seq"] > self.last_seq, (data, self.last_seq)
                self.last_seq = data["seq"]
                self.seen.append(data)
            if data.get("type") == kind:
                return data

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def duties_of(node: Node) -> dict[str, Any]:
    """The ``duties`` of the node's ``cluster`` health entry ({} if it cannot answer)."""
    try:
        cluster = (await node.health())["links"].get("cluster", {})
    except (aiohttp.ClientError, TimeoutError):
        return {}
    duties: dict[str, Any] = cluster.get("duties", {})
    return duties


async def holder_of_duty(node: Node, duty: str) -> str | None:
    """Who holds ``duty`` as the node sees it (itself if it runs it)."""
    state = (await duties_of(node)).get(duty, {})
    if state.get("held"):
        return node.name
    holder: str | None = state.get("holder")
    return holder
