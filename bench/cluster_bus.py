"""Cluster event bus: throughput and cross-node delivery latency, with a single-node baseline.

``python -m bench.cluster_bus [--events 50000] [--pops 500]`` starts a private
redis-server (no persistence, free loopback port, stopped by its PID) and two
ClusterHubs ("A" and "B", each with its own Redis connection pool, as two
nodes would have) in this process, then measures:

1. throughput: ``--events`` events published on A, until all are delivered on
   B's subscriber (events/s); baseline: the same publishes on a local EventHub.
2. latency: ``--pops`` screen-pop sized events published one at a time on A,
   each timed until B's subscriber has it (p50/p99/max); baseline: the same
   on a local EventHub (single node: publish -> the agent's socket queue).

Target (issue #10): throughput >= 10,000 events/s; cross-node p99 <= single-node
p99 + 20 ms. Both hubs share one event loop here, so the cross-node figures
include the other node's work on the same core (pessimistic).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cti.cluster.hub import ClusterHub
from cti.cluster.redis_client import connect_redis
from cti.hub import EventHub, Subscription

POP_BODY = {
    "channel": "voice",
    "customer": {"id": 42, "name": "Иван Петров", "phones": ["+79161234567"], "vip": True},
    "conversation": {"id": 1001, "queue": "support", "status": "queued"},
    "history": [{"kind": "call_ended", "channel": "voice", "at": "2026-11-23T10:00:00Z"}] * 5,
}


QUEUE = 1_100_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing (apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="cti-bench-redis-"))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


async def _drain(sub: Subscription, count: int) -> None:
    for _ in range(count):
        await sub.queue.get()


async def throughput(publisher: EventHub, receiver: EventHub, events: int) -> float:
    """Events/s from the first publish on ``publisher`` to the last delivery on ``receiver``.

    The publisher never waits (as the server's callers do not); the receiving
    socket queue is sized (``queue_size``) to hold every event of the run.
    """
    sub = receiver.subscribe(1, None)
    start = time.perf_counter()
    for i in range(events):
        publisher.publish([1], "bench", {"n": i})
        if i % 1000 == 999:
            await asyncio.sleep(0)  # let the bus writer and reader run, as a server would
    await _drain(sub, events)
    elapsed = time.perf_counter() - start
    assert not sub.overflowed, "the receiving queue overflowed: raise queue_size"
    receiver.unsubscribe(sub)
    return events / elapsed


async def latencies(publisher: EventHub, receiver: EventHub, pops: int) -> list[float]:
    sub = receiver.subscribe(2, None)
    out: list[float] = []
    for _ in range(pops):
        start = time.perf_counter()
        publisher.publish([2], "screen_pop", POP_BODY)
        await sub.queue.get()
        out.append((time.perf_counter() - start) * 1000.0)
    receiver.unsubscribe(sub)
    return out


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):7.3f} ms  p99 {p99:7.3f} ms  max {ordered[-1]:7.3f} ms"


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def main_async(args: argparse.Namespace) -> int:
    local = EventHub(replay=500, queue_size=QUEUE)
    local_rate = await throughput(local, local, args.events)
    local_lat = await latencies(local, local, args.pops)
    with redis_server() as url:
        client_a = connect_redis(url, timeout=5)
        client_b = connect_redis(url, timeout=5)
        node_a = ClusterHub("A", replay=500, queue_size=QUEUE)
        node_b = ClusterHub("B", replay=500, queue_size=QUEUE)
        await node_a.start(client_a, batch=args.batch)
        await node_b.start(client_b, batch=args.batch)
        try:
            await latencies(node_a, node_b, 50)  # warm up (scripts loaded, pools filled)
            bus_rate = await throughput(node_a, node_b, args.events)
            bus_lat = await latencies(node_a, node_b, args.pops)
        finally:
            await node_a.stop()
            await node_b.stop()
            await client_a.aclose()
            await client_b.aclose()
    print(f"events: {args.events}, pops: {args.pops}, bus batch: {args.batch}")
    print(f"throughput  single node (EventHub)       : {local_rate:12,.0f} events/s")
    print(
        f"throughput  cluster bus A -> B (Redis)   : {bus_rate:12,.0f} events/s"
        f"   target >= 10,000  {'OK' if bus_rate >= 10_000 else 'MISSED'}"
    )
    print(f"pop latency single node                  : {_summary(local_lat)}")
    print(f"pop latency cross-node A -> B            : {_summary(bus_lat)}")
    extra = _p99(bus_lat) - _p99(local_lat)
    print(
        f"cross-node p99 - single-node p99         : {extra:7.3f} ms"
        f"   target <= 20 ms  {'OK' if extra <= 20 else 'MISSED'}"
    )
    return 0 if bus_rate >= 10_000 and extra <= 20 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--pops", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500, help="bus read/write batch")
    args = parser.parse_args()
    limits = ((args.events, 1_000_000), (args.pops, 1_000_000), (args.batch, 10_000))
    if any(not 1 <= value <= top for value, top in limits):
        raise SystemExit("--events, --pops and --batch must be positive (and sane)")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
