"""Screen-pop latency through the real server under AMI load and 500 agent WebSockets.

    .venv/bin/python -m bench.screenpop [--agents 500] [--rate 2000] [--probes 300]

Two processes, so the server has a core of its own (2-core machine): the
server is ``python -m cti serve`` (build_app, SQLite in a temp dir, CTI_AMI_URL
pointing at the scripted AMI), and this process runs the scripted AMI server
(bench.ami_scripted_server), the background event generator and every
WebSocket client. The latency of a probe is measured on one clock (this
process's perf_counter): from just before the AgentCalled bytes are written
to the AMI socket to the moment the ``screen_pop`` frame for that call is read
from that agent's WebSocket (so it includes this process's own loop lag).

Phases, same run:
  A  baseline: no background load, one agent socket;
  B  load: ``--agents`` sockets (each authenticated on /api/v1/events with a
     bearer token signed with the server's key), ``--rate`` background AMI
     events/s (the recorded lab queue calls, re-numbered: ~39 events per call,
     one AgentCalled per call, answered/abandoned/hung up as recorded); every
     second background call is offered to one of ``--slow`` "slow" agents whose
     callers have heavy cards (~100 KB pops);
  C  as B plus ``--slow`` raw WebSockets of those slow agents that never read
     (4 KB receive buffer): the fast sockets' p99 must not move.
Then the hub check in this process: one publish to an agent with 500 sockets
encodes once (``EventHub.encoded``) and costs about what it costs for 1 socket.
Target: p99 <= 100 ms in B and C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import insert, text

from bench.ami_scripted_server import BenchAmi, CallTemplate, load_events
from bench.pg_cluster import pg_cluster
from cti.auth import Principal, Role, TokenSigner, hash_password
from cti.db import create_engine, migrate
from cti.hub import EventHub
from cti.models import Agent, Customer, HistoryEvent, Identity, utcnow

SECRET_KEY = "bench-screenpop-key"
AMI_SECRET = "bench-ami-secret"
CUSTOMERS = 5000
HEAVY = 20
POP_TIMEOUT = 10.0
HEAVY_CALLS = 5
HEAVY_BASE = 1_980_000_000
CHAN_BASE = 0x80000000  # probe channels never collide with background ones
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def phone(i: int) -> str:
    return f"+7900{i:07d}"


def heavy_phone(i: int) -> str:
    return f"+7999{i:07d}"


async def seed(db_url: str, agents: int) -> None:
    """Agents agent1..N (endpoint PJSIP/agentK), customers with phones and some history."""
    engine = create_engine(db_url)
    await migrate(engine)
    pw = hash_password("bench-password")
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            insert(Agent),
            [
                {
                    "id": k,
                    "login": f"agent{k}",
                    "name": f"Agent {k}",
                    "password_hash": pw,
                    "role": "agent",
                    "endpoint": f"PJSIP/agent{k}",
                    "queues": ["support"],
                    "skills": [],
                    "max_text": 3,
                    "available": True,
                    "created_at": now,
                }
                for k in range(1, agents + 1)
            ],
        )
        customers = [
            {
                "id": i,
                "name": f"Клиент {i}",
                "tags": ["vip"] if i % 10 == 0 else [],
                "notes": "",
                "custom": {"contract": f"C-{i}"},
                "provisional": False,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(1, CUSTOMERS + 1)
        ]
        customers += [
            {
                "id": CUSTOMERS + h,
                "name": f"Тяжёлый клиент {h}",
                "tags": ["heavy"],
                "notes": "Заметка. " * 1100,
                "custom": {f"field{j}": "значение " * 20 for j in range(60)},
                "provisional": False,
                "created_at": now,
                "updated_at": now,
            }
            for h in range(1, HEAVY + 1)
        ]
        await conn.execute(insert(Customer), customers)
        idents = [
            {
                "customer_id": i,
                "kind": "phone",
                "value": phone(i),
                "raw": phone(i),
                "valid": True,
                "verified": False,
                "created_at": now,
            }
            for i in range(1, CUSTOMERS + 1)
        ] + [
            {
                "customer_id": CUSTOMERS + h,
                "kind": "phone",
                "value": heavy_phone(h),
                "raw": heavy_phone(h),
                "valid": True,
                "verified": False,
                "created_at": now,
            }
            for h in range(1, HEAVY + 1)
        ]
        await conn.execute(insert(Identity), idents)
        history = []
        for i in range(1, CUSTOMERS + 1):
            for j in range(5):
                history.append(
                    {
                        "customer_id": i,
                        "kind": "message_in",
                        "channel": "sms",
                        "occurred_at": now - timedelta(days=j + 1),
                        "payload": {"text": f"сообщение {j}"},
                    }
                )
        for h in range(1, HEAVY + 1):
            for j in range(25):
                history.append(
                    {
                        "customer_id": CUSTOMERS + h,
                        "kind": "message_in",
                        "channel": "chat",
                        "occurred_at": now - timedelta(hours=j + 1),
                        "payload": {"text": "Длинное сообщение клиента. " * 75},
                    }
                )
        await conn.execute(insert(HistoryEvent), history)
        if conn.dialect.name == "postgresql":  # explicit ids: move the sequences past them
            for table in ("agents", "customers", "identities", "history_events"):
                await conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    await engine.dispose()


@dataclass
class Probes:
    pending: dict[str, tuple[float, asyncio.Future[float]]] = field(default_factory=dict)
    received_pops: int = 0

    def on_frame(self, text: str) -> None:
        if '"screen_pop"' not in text:
            return
        self.received_pops += 1
        msg = json.loads(text)
        call_id = str(msg.get("interaction", {}).get("call_id", ""))
        linkedid = call_id.rsplit(":", 1)[-1]
        item = self.pending.pop(linkedid, None)
        if item is not None and not item[1].done():
            item[1].set_result(time.perf_counter() - item[0])


async def reader(ws: aiohttp.ClientWebSocketResponse, probes: Probes) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            probes.on_frame(msg.data)


async def connect_agent(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    probes: Probes,
    tasks: set[asyncio.Task[None]],
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(
        f"{base}/api/v1/events?token={token}", heartbeat=None, max_msg_size=0
    )
    hello = await ws.receive_json(timeout=30)
    if hello.get("type") != "hello":
        raise SystemExit(f"no hello on the events socket: {hello}")
    task = asyncio.create_task(reader(ws, probes))
    tasks.add(task)
    return ws


async def slow_socket(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket that completes the handshake and then never reads (4 KB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(
        (
            f"GET /api/v1/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"slow socket handshake failed: {head[:200]!r}")
    return r, w


class ProbeCalls:
    """Probe calls: caller joins the queue, AgentCalled (timed) for one agent, then abandons."""

    def __init__(self, ami: BenchAmi, template: CallTemplate, probes: Probes) -> None:
        events = template.events
        offered = next(e for e in events if e[0][1] == "AgentCalled")
        abandoned = [e for e in events if ("Linkedid", "1795426752.4") in e]
        joined = next(i for i, e in enumerate(abandoned) if e[0][1] == "QueueCallerJoin")
        ringing = next(i for i, e in enumerate(abandoned) if e[0][1] == "MusicOnHoldStart")
        # The AgentCalled of the answered call, moved onto the abandoned call's channel.
        chan = dict(abandoned[0])["Channel"]
        moved = [
            (
                k,
                {
                    "Channel": chan,
                    "Uniqueid": "1795426752.4",
                    "Linkedid": "1795426752.4",
                    "CallerIDNum": "84951234567",
                    "DestLinkedid": "1795426752.4",
                }.get(k, v),
            )
            for k, v in offered
        ]
        # As recorded: the call arrives, ~0.5 s of IVR, then QueueCallerJoin and
        # AgentCalled 2 ms apart (the CallQueued handling precedes the pop).
        self.arrive = CallTemplate(abandoned[:joined])
        self.join = CallTemplate(abandoned[joined : ringing + 1])
        self.offer = CallTemplate([moved])
        self.after = CallTemplate(abandoned[ringing + 1 :])
        self.ami = ami
        self.probes = probes
        self.n = 0
        self.lost = 0

    def heavy_arrival(self, h: int) -> bytes:
        render = {
            "agents": {},
            "callers": {"84951234567": heavy_phone(h)},
            "id_base": HEAVY_BASE,
            "chan_base": CHAN_BASE // 2,
        }
        return b"".join(self.arrive.render(h, **render) + self.join.render(h, **render))  # type: ignore[arg-type]

    def heavy_offer(self, h: int, agent: int) -> bytes:
        render = {
            "agents": {"1": f"agent{agent}"},
            "callers": {"84951234567": heavy_phone(h)},
            "id_base": HEAVY_BASE,
            "chan_base": CHAN_BASE // 2,
        }
        return b"".join(self.offer.render(h, **render))  # type: ignore[arg-type]

    async def one(self, agent: int) -> float | None:
        self.n += 1
        n = self.n
        base = 1_990_000_000
        callers = {"84951234567": phone(random.randint(1, CUSTOMERS))}
        agents = {"1": f"agent{agent}"}
        render = {"agents": agents, "callers": callers, "id_base": base, "chan_base": CHAN_BASE}
        self.ami.send(b"".join(self.arrive.render(n, **render)))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        self.ami.send(b"".join(self.join.render(n, **render)))  # type: ignore[arg-type]
        await asyncio.sleep(0.002)
        linkedid = f"{base + n * 10 + 4}.4"
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        data = b"".join(self.offer.render(n, **render))  # type: ignore[arg-type]
        t0 = self.ami.send(data)
        self.probes.pending[linkedid] = (t0, fut)
        try:
            return await asyncio.wait_for(fut, POP_TIMEOUT)
        except TimeoutError:
            self.lost += 1
            self.probes.pending.pop(linkedid, None)
            return None
        finally:
            self.ami.send(b"".join(self.after.render(n, **render)))  # type: ignore[arg-type]

    async def run(self, count: int, agents: list[int], per_s: float) -> list[float]:
        out: list[float] = []
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(self.one(agents[i % len(agents)])))
            await asyncio.sleep(1 / per_s)
        for result in await asyncio.gather(*tasks):
            if result is not None:
                out.append(result)
        return out


class Load:
    """Background AMI events at ``rate``/s: recorded calls plus recorded non-call events.

    ``calls`` new calls per second (each the recorded set: ~39 events, offered,
    answered or abandoned, hung up, re-numbered); the rest of ``rate`` is the
    recording's non-call events (QueueMemberStatus, PeerStatus, ContactStatus)
    for random agents. ``heavy`` AgentCalled/s re-offer a few long-waiting
    callers with heavy cards (~100 KB pops) to the slow agents (ring-all).
    """

    def __init__(
        self,
        ami: BenchAmi,
        template: CallTemplate,
        probe: ProbeCalls,
        fast: int,
        slow: list[int],
        noise: tuple[str, ...],
    ) -> None:
        self.ami = ami
        self.template = template
        self.probe = probe
        self.fast = fast
        self.slow = slow
        self.sent = 0
        self.calls = 0
        self._rng = random.Random(11)
        self._noise = CallTemplate(
            [
                e
                for e in template.events
                if e[0][1] in ("QueueMemberStatus", "PeerStatus", "ContactStatus")
            ]
        )

    def _call_set(self, n: int) -> list[bytes]:
        rng = self._rng
        agents = {
            "1": f"agent{rng.randint(1, self.fast)}",
            "2": f"agent{rng.randint(1, self.fast)}",
        }
        callers = {
            c: phone(rng.randint(1, CUSTOMERS))
            for c in ("+79161234567", "84951234567", "+79031112233")
        }
        return self.template.render(n, agents, callers)

    def _noise_set(self, n: int) -> list[bytes]:
        rng = self._rng
        agents = {
            "1": f"agent{rng.randint(1, self.fast)}",
            "2": f"agent{rng.randint(1, self.fast)}",
        }
        return self._noise.render(n, agents, {})

    async def run(self, rate: int, calls: float, heavy: float, stop: asyncio.Event) -> None:
        tick = 0.01
        per_tick = rate * tick
        budget = call_budget = heavy_budget = 0.0
        n = m = 0
        noise: list[bytes] = []
        if self.slow and heavy > 0:
            for h in range(1, HEAVY_CALLS + 1):
                self.ami.send(self.probe.heavy_arrival(h))
        next_t = time.perf_counter()
        while not stop.is_set():
            budget += per_tick
            call_budget += calls * tick
            heavy_budget += heavy * tick
            chunk: list[bytes] = []
            while call_budget >= 1:
                chunk.extend(self._call_set(n))
                n += 1
                call_budget -= 1
                self.calls += 1
            while self.slow and heavy_budget >= 1:
                chunk.append(
                    self.probe.heavy_offer(
                        self._rng.randint(1, HEAVY_CALLS), self._rng.choice(self.slow)
                    )
                )
                heavy_budget -= 1
            while len(chunk) < budget:
                if not noise:
                    noise = self._noise_set(m)
                    m += 1
                chunk.append(noise.pop())
            budget -= len(chunk)
            self.ami.send(b"".join(chunk))
            self.sent += len(chunk)
            next_t += tick
            delay = next_t - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(name: str, lat: list[float], lost: int) -> str:
    if not lat:
        return f"{name}: no pop received ({lost} lost)"
    ms = [x * 1000 for x in lat]
    return (
        f"{name}: n={len(ms)} p50 {pct(ms, 50):6.1f} ms  p95 {pct(ms, 95):6.1f} ms  "
        f"p99 {pct(ms, 99):6.1f} ms  max {max(ms):6.1f} ms  lost {lost}"
    )


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "cti", "serve", "--log-level", "WARNING"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def start_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling the server: raw collapsed stacks to ``out``."""
    spy = str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-f", "raw", "-o", out, "-r", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(
    session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cti serve exited {proc.returncode}:\n{tail(log)}")
        try:
            async with session.get(f"{base}/api/v1/health") as resp:
                links = (await resp.json()).get("links", {})
                if any(k.startswith("pbx") and v.get("up") for k, v in links.items()):
                    return
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.3)
    raise SystemExit(f"cti serve not ready in 120 s:\n{tail(log)}")


def hub_check(sockets: int = 500, publishes: int = 2000) -> str:
    body = {
        "customer": {"id": 1, "name": "Иван", "notes": "x" * 2000},
        "history": [{"kind": "message_in", "payload": {"text": "y" * 200}}] * 20,
    }

    def run(n_socks: int) -> tuple[float, int]:
        hub = EventHub(replay=10, queue_size=publishes + 10)
        for _ in range(n_socks):
            hub.subscribe(1, None)
        t0 = time.perf_counter()
        for _ in range(publishes):
            hub.publish([1], "screen_pop", body)
        return (time.perf_counter() - t0) / publishes, hub.encoded

    one, enc1 = run(1)
    many, enc_many = run(sockets)
    return (
        f"hub: {publishes} publishes to an agent with 1 socket: {one * 1e6:.0f} us each, "
        f"encoded {enc1}; with {sockets} sockets: {many * 1e6:.0f} us each, encoded "
        f"{enc_many} ({'once per event' if enc_many == publishes else 'NOT once'}); "
        f"ratio x{many / one:.1f}"
    )


async def main_async(args: argparse.Namespace) -> int:
    if args.db == "postgresql":
        with pg_cluster() as url:
            return await run_bench(args, url)
    return await run_bench(args, None)


async def run_bench(args: argparse.Namespace, pg_url: str | None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cti-bench-pop-"))
    db_url = pg_url or f"sqlite+aiosqlite:///{tmp / 'cti.sqlite3'}"
    print(
        f"database: {'PostgreSQL 15' if pg_url else 'SQLite (WAL)'}; load {load_average()}",
        flush=True,
    )
    slow_ids = list(range(args.agents + 1, args.agents + args.slow + 1))
    await seed(db_url, args.agents + args.slow)
    ami = BenchAmi(AMI_SECRET)
    await ami.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CTI_DB_URL": db_url,
        "CTI_AMI_URL": ami.url(),
        "CTI_HTTP_LISTEN": f"127.0.0.1:{port}",
        "CTI_SECRET_KEY": SECRET_KEY,
        "CTI_DATA_DIR": str(tmp),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp / "server.log"
    proc = start_server(env, log)
    signer = TokenSigner(SECRET_KEY, 3600)
    tasks: set[asyncio.Task[None]] = set()
    template = CallTemplate(load_events())
    probes = Probes()
    try:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            await wait_ready(session, base, proc, log)
            caller = ProbeCalls(ami, template, probes)
            token = {
                k: signer.issue(Principal(k, Role.AGENT))
                for k in range(1, args.agents + args.slow + 1)
            }
            # A: baseline
            await connect_agent(session, base, token[1], probes, tasks)
            await caller.run(20, [1], 10)  # warm-up
            caller.lost = 0
            lat_a = await caller.run(args.baseline_probes, [1], 10)
            print(summary("A baseline (1 socket, no load)   ", lat_a, caller.lost), flush=True)
            # B: load
            for start in range(2, args.agents + 1, 50):
                await asyncio.gather(
                    *(
                        connect_agent(session, base, token[k], probes, tasks)
                        for k in range(start, min(start + 50, args.agents + 1))
                    )
                )
            stop = asyncio.Event()
            load = Load(ami, template, caller, args.agents, slow_ids, tuple(args.noise.split(",")))
            load_task = asyncio.create_task(load.run(args.rate, args.calls, args.heavy, stop))
            await asyncio.sleep(3)
            t_b = time.perf_counter()
            cpu_b = cpu_seconds(proc.pid)
            sent_b = load.sent
            caller.lost = 0
            fast = list(range(1, args.agents + 1))
            random.Random(5).shuffle(fast)
            spy = start_spy(proc.pid, args.profile) if args.profile else None
            lat_b = await caller.run(args.probes, fast, 10)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            rate_b = (load.sent - sent_b) / (time.perf_counter() - t_b)
            busy_b = (cpu_seconds(proc.pid) - cpu_b) / (time.perf_counter() - t_b)
            lost_b = caller.lost
            print(
                summary(f"B {args.agents} sockets, {rate_b:,.0f} ev/s     ", lat_b, lost_b)
                + f"  server CPU {busy_b:.0%} of a core",
                flush=True,
            )
            # C: load + slow readers
            slow = [await slow_socket(port, token[k]) for k in slow_ids]
            await asyncio.sleep(3)
            t_c = time.perf_counter()
            sent_c = load.sent
            caller.lost = 0
            lat_c = await caller.run(args.probes, fast, 10)
            rate_c = (load.sent - sent_c) / (time.perf_counter() - t_c)
            lost_c = caller.lost
            print(summary(f"C as B + {args.slow} non-reading sockets", lat_c, lost_c), flush=True)
            stop.set()
            await load_task

            async def drained(r: asyncio.StreamReader) -> int:
                try:
                    return len(await asyncio.wait_for(r.read(), 75))
                except TimeoutError:
                    return -1

            sizes = await asyncio.gather(*(drained(r) for r, _ in slow))
            for _, w in slow:
                w.transport.abort()
            closed = sum(1 for n in sizes if n >= 0)
            got = sum(n for n in sizes if n > 0)
            print(
                f"   background {rate_c:,.0f} ev/s in C; slow sockets closed by the server "
                f"(queue overflow / heartbeat) after they were read: {closed}/{len(slow)}; "
                f"{got / 1e6:.1f} MB were waiting for them; pops received by the fast sockets: "
                f"{probes.received_pops}; background calls {load.calls}"
            )
            ok_b = bool(lat_b) and pct(lat_b, 99) <= 0.1 and lost_b == 0
            ok_c = bool(lat_c) and pct(lat_c, 99) <= 0.1 and lost_c == 0
            if lat_a and lat_b:
                print(
                    f"   ratio p99 B/A x{pct(lat_b, 99) / pct(lat_a, 99):.1f}; "
                    f"C/B x{pct(lat_c, 99) / pct(lat_b, 99):.2f}"
                    if lat_c
                    else ""
                )
            print(
                f"target p99 <= 100 ms: B {'OK' if ok_b else 'MISSED'}, "
                f"C {'OK' if ok_c else 'MISSED'}"
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await ami.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(hub_check())
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--slow", type=int, default=5)
    parser.add_argument("--rate", type=int, default=2000, help="background AMI events/s")
    parser.add_argument(
        "--noise",
        default="QueueMemberStatus,PeerStatus,ContactStatus",
        help="recorded non-call event types that fill --rate (recorded mix)",
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--calls",
        type=float,
        default=5.0,
        help="new background calls/s inside --rate (recorded ~39 events each)",
    )
    parser.add_argument(
        "--heavy",
        type=float,
        default=10.0,
        help="heavy (~100 KB) pops/s offered to the slow agents",
    )
    parser.add_argument("--probes", type=int, default=300, help="timed pops per loaded phase")
    parser.add_argument("--baseline-probes", type=int, default=100)
    parser.add_argument("--profile", help="py-spy the server during phase B (raw stacks here)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server log)")
    raise SystemExit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
