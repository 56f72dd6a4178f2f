"""Two-node helpers: ``cti serve`` subprocesses sharing PostgreSQL and Redis, and their APIs.

Start-up cost (loaded 2-core box): most of a node's start is importing the
server (10-20 s of wall time), then Alembic and the app start. ``start_pair``
migrates the database and seeds the admin once in the test process, while
both nodes import behind a gate (``Node.start(gated=True)``: the same
``cti serve`` entry point, ``cti.cli.main``, called once a line arrives on
stdin); a pair that needs A to hold something first releases B only then.
"""

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

from cti.config import BootstrapAdmin, Settings
from cti.services import Services

ROOT = Path(__file__).resolve().parents[3]
CTI = ROOT / ".venv" / "bin" / "cti"
PYTHON = ROOT / ".venv" / "bin" / "python"
# `cti serve` as .venv/bin/cti runs it, after the imports and a line on stdin.
GATED_SERVE = (
    "import sys\n"
    "import cti.serve\n"
    "from cti.cli import main\n"
    "sys.stdin.readline()\n"
    "sys.argv[0] = 'cti'\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
TIMEOUT = 60.0
ADMIN = ("admin", "admin-password-1")
SECRET = "cluster-test-secret"


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = TIMEOUT,
                every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            # AssertionError, not pytest.fail(): that raises a BaseException, which
            # inside a coroutine left the event loop of an async test hanging
            # until pytest-timeout (180 s) in CI.
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


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

    def start(self, gated: bool = False) -> None:
        """Run ``cti serve``; ``gated``: import it now, serve once ``release()`` is called."""
        if not CTI.exists():
            pytest.fail(f"{CTI} is missing: install the project into .venv (pip install -e .)")
        command = [str(PYTHON), "-c", GATED_SERVE] if gated else [str(CTI)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*command, "serve", "--log-level", "INFO"], env=self.env, cwd=self.log.parent,
                stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
            )

    def release(self) -> None:
        """Let a gated node go on to serve."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """Send SIGTERM (if it still runs); ``stop()`` then waits for the exit."""
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.proc is not None and self.proc.poll() is None:
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
                raise AssertionError(f"node {self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.tail()}")
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


async def prepare_database(db_url: str) -> None:
    """Migrate the shared database and seed the bootstrap admin, once, before the nodes start.

    The nodes then find the schema at head and an admin present: neither runs
    Alembic's upgrades nor creates the admin, so they may start together.
    """
    settings = Settings(db_url=db_url, secret_key=SECRET,
                        bootstrap_admin=BootstrapAdmin(ADMIN[0], ADMIN[1]))
    services = Services(settings)
    await services.start()
    await services.stop()


async def start_pair(node_a: Node, node_b: Node, db_url: str,
                     a_first: Callable[[], Awaitable[bool]] | None = None,
                     what: str = "node A ready for B") -> None:
    """Start two nodes on a fresh database: both import at once while the database is
    prepared; then both serve, or, with ``a_first``, B only once that holds on A."""
    node_a.start(gated=True)
    node_b.start(gated=True)
    await prepare_database(db_url)
    node_a.release()
    if a_first is None:
        node_b.release()
        await asyncio.gather(node_a.wait_ready(), node_b.wait_ready())
        return
    await node_a.wait_ready()
    await until(what, a_first)
    node_b.release()
    await node_b.wait_ready()


async def close_all(nodes: list[Node]) -> None:
    """Stop nodes together: SIGTERM to all first (no lease handed from one to the next)."""
    for node in nodes:
        node.terminate()
    for node in nodes:
        if node.http is not None:
            await node.http.close()
    await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))


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
                raise AssertionError(f"{self.login}: no {kind!r} frame within {within:g} s; "
                                     f"saw {[m.get('type') for m in self.seen]}")
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"{self.login}: socket ended ({msg.type}) "
                                     f"waiting for {kind!r}")
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
