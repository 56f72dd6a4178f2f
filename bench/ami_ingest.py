"""AMI ingest benchmark: replay a recorded lab transcript over loopback TCP at full speed.

    .venv/bin/python -m bench.ami_ingest [--repeat N] [transcript]

Prints events/s, measured in the same run, for:
  * pbx: AmiParser + typed events + PbxTracker (parse + state apply);
  * pbx AmiLink: the whole adapter (panoramisk Manager + pbx parser + state), after
    a real login and resync against a scripted AMI on loopback;
  * plain panoramisk 1.4 AMIProtocol with no state (the baseline the issue names);
  * asyncio StreamReader.readline, splitting messages into header dicts (baseline).
Then the event-loop stall while the pbx path ingests at 2,000 events/s (p99 of the
lateness of a 5 ms ticker), which must stay well under Asterisk's writetimeout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from panoramisk.ami_protocol import AMIProtocol

from pbx import events as ev
from pbx.framing import AmiParser
from pbx.link import AmiLink, LinkSettings
from pbx.state import PbxTracker
from tests.functional.pbx.ami_server import ScriptedAmi

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ami" / "lab_queue_calls.txt"
BANNER = b"Asterisk Call Manager/5.0.4\r\n"


def load_body(path: Path) -> tuple[bytes, int]:
    """The transcript without banner and responses: only events; and their count."""
    messages = AmiParser().messages(path.read_bytes())
    events = [m for m in messages if m.event is not None and m.action_id is None]
    body = b"".join(
        b"".join(f"{k}: {v}\r\n".encode() for k, v in m.headers) + b"\r\n" for m in events)
    return body, len(events)


async def serve(
    payload: bytes, pace: tuple[int, float] | None = None
) -> tuple[asyncio.Server, int]:
    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if pace is None:
            writer.write(payload)
        else:
            step, interval = pace
            for i in range(0, len(payload), step):
                writer.write(payload[i : i + step])
                await writer.drain()
                await asyncio.sleep(interval)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class PbxPath(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.parser = AmiParser()
        self.tracker = PbxTracker("bench")
        self.events = 0
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (msg := self.parser.next_message()) is not None:
            event = ev.decode_event(msg)
            self.events += 1
            if event is not None:
                self.tracker.apply(event, ev.event_time(msg, 0.0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(self.events)


class _Counter:
    def __init__(self) -> None:
        self.forgetable_actions = ()
        self.awaiting_actions: list[Any] = []
        self.save_stream = None
        self.events = 0

    def dispatch(self, message: Any) -> None:
        self.events += 1

    def connection_lost(self, exc: Any) -> None:
        pass


class PanoramiskPath(AMIProtocol):  # type: ignore[misc]
    def __init__(self, done: asyncio.Future[int]) -> None:
        super().__init__()
        self.done_future = done
        self.counter = _Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.factory = self.counter
        self.encoding = "utf-8"

    def connection_lost(self, exc: Exception | None) -> None:
        self.done_future.set_result(self.counter.events)


async def run_protocol(kind: Callable[[asyncio.Future[int]], asyncio.Protocol],
                       payload: bytes) -> tuple[int, float]:
    server, port = await serve(payload)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    start = time.perf_counter()
    await loop.create_connection(lambda: kind(done), "127.0.0.1", port)
    count = await done
    elapsed = time.perf_counter() - start
    server.close()
    return count, elapsed


async def run_readline(payload: bytes) -> tuple[int, float]:
    server, port = await serve(payload)
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    await reader.readline()
    count = 0
    headers: dict[str, str] = {}
    while line := await reader.readline():
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if headers:
                count += 1
                headers = {}
            continue
        key, _, value = text.partition(": ")
        headers.setdefault(key, value)
    elapsed = time.perf_counter() - start
    writer.close()
    server.close()
    return count, elapsed


async def run_link(body: bytes, repeat: int, events: int) -> tuple[int, float]:
    ami = ScriptedAmi()
    await ami.start()
    link = AmiLink("bench", ami.url, LinkSettings(backoff_min=0.001))
    stream = link.changes()
    try:
        await link.start()
        await link.wait_up(10)
        # queue the burst for the next login: drop the link, the reconnect streams it
        marker = (b"Event: UserEvent\r\nUserEvent: BenchDone\r\n\r\n")
        ami.after_login = body * repeat + marker
        start = time.perf_counter()
        ami.drop_all()
        async for change in stream:
            if getattr(change, "name", None) == "BenchDone":
                break
        elapsed = time.perf_counter() - start
    finally:
        await link.stop()
        await ami.stop()
    return events * repeat, elapsed


async def stall_at_rate(body: bytes, events: int, rate: float, seconds: float) -> list[float]:
    per_ms = len(body) / events * rate / 1000.0
    step = max(int(per_ms * 10), 1)  # bytes per 10 ms
    repeat = max(int(rate * seconds / events), 1)
    server, port = await serve(BANNER + body * repeat, pace=(step, 0.01))
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    await loop.create_connection(lambda: PbxPath(done), "127.0.0.1", port)
    lateness: list[float] = []

    async def tick() -> None:
        while not done.done():
            t0 = loop.time()
            await asyncio.sleep(0.005)
            lateness.append(loop.time() - t0 - 0.005)

    await asyncio.gather(tick(), done)
    server.close()
    return lateness


def _rate(name: str, count: int, elapsed: float, base: float | None = None) -> float:
    rate = count / elapsed
    ratio = f"  ({rate / base:.2f}x plain panoramisk)" if base else ""
    print(f"{name:<44} {count:>8} events {elapsed:7.3f} s {rate:>10,.0f} events/s{ratio}")
    return rate


async def main(path: Path, repeat: int) -> None:
    body, events = load_body(path)
    payload = BANNER + body * repeat
    print(f"transcript {path.name}: {events} events x {repeat} = {events * repeat} events, "
          f"{len(payload) / 1e6:.1f} MB over loopback TCP")
    runs: dict[str, list[tuple[int, float]]] = {"pbx": [], "panoramisk": [], "readline": []}
    for _ in range(3):  # interleaved, best of three
        runs["panoramisk"].append(await run_protocol(PanoramiskPath, payload))
        runs["pbx"].append(await run_protocol(PbxPath, payload))
        runs["readline"].append(await run_readline(payload))
    best = {k: min(v, key=lambda r: r[1]) for k, v in runs.items()}
    base = _rate("plain panoramisk 1.4 (no state)", *best["panoramisk"])
    _rate("StreamReader.readline + header dict", *best["readline"], base=base)
    _rate("pbx: parse + typed events + state", *best["pbx"], base=base)
    _rate("pbx AmiLink end to end (changes stream)", *await run_link(body, repeat, events),
          base=base)
    lateness = await stall_at_rate(body, events, 2000.0, 5.0)
    q = statistics.quantiles(lateness, n=100)
    print(f"event-loop stall at 2,000 events/s: p50 {q[49] * 1000:.2f} ms, "
          f"p99 {q[98] * 1000:.2f} ms, max {max(lateness) * 1000:.2f} ms "
          f"({len(lateness)} ticks of 5 ms)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transcript", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    run: Awaitable[None] = main(args.transcript, args.repeat)
    asyncio.run(run)  # type: ignore[arg-type]


if __name__ == "__main__":
    cli()
