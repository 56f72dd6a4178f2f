"""A scripted AMI server for benchmarks: banner, Login, the resync actions, Ping; events on demand.

Same idea as tests/functional/pbx/ami_server.py (not imported: benches do not
depend on tests). ``send(data)`` writes raw event bytes to every logged-in
connection and returns ``time.perf_counter()`` taken right before the write,
which is when the event "arrives on the AMI socket" for latency figures.

``CallTemplate`` turns the recorded lab transcript into fresh calls: each
``render(n, ...)`` rewrites Uniqueid/Linkedid, channel names, agent names,
caller numbers and timestamps so repetition ``n`` is a new set of calls.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ami" / "lab_queue_calls.txt"
BANNER = b"Asterisk Call Manager/5.0.4\r\n"
MAX_ACTION = 64 * 1024

Headers = list[tuple[str, str]]


def frame(headers: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"


def parse_messages(text: str) -> list[Headers]:
    out: list[Headers] = []
    for block in re.split(r"\r?\n\r?\n", text):
        headers: Headers = []
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                headers.append((key.strip(), value.strip()))
        if headers:
            out.append(headers)
    return out


def load_events(path: Path = FIXTURE) -> list[Headers]:
    """The transcript's events (no banner, no responses)."""
    return [m for m in parse_messages(path.read_text()) if m[0][0] == "Event"]


ID = re.compile(r"\b(17954267\d\d)\.(\d+)\b")
CHANNEL = re.compile(r"(PJSIP/[A-Za-z0-9_]+?)-([0-9a-f]{8})\b")
AGENT = re.compile(r"\bagent([12])\b")
CALLERS = ("+79161234567", "+79031112233", "84951234567")
ID_BASE = 1795426748


class CallTemplate:
    """Fresh copies of recorded events (ids, channels, agents, callers replaced)."""

    def __init__(self, events: list[Headers]) -> None:
        self.events = events

    def render(
        self,
        n: int,
        agents: dict[str, str],
        callers: dict[str, str],
        id_base: int = 1_900_000_000,
        chan_base: int = 0,
    ) -> list[bytes]:
        now = f"{time.time():.6f}"

        def new_id(m: re.Match[str]) -> str:
            return f"{id_base + n * 10 + int(m.group(1)) - ID_BASE}.{m.group(2)}"

        def new_channel(m: re.Match[str]) -> str:
            return f"{m.group(1)}-{(chan_base + n * 16 + int(m.group(2), 16)) & 0xFFFFFFFF:08x}"

        def new_agent(m: re.Match[str]) -> str:
            return agents.get(m.group(1), f"agent{m.group(1)}")

        out = []
        for headers in self.events:
            fresh: Headers = []
            for key, value in headers:
                if key == "Timestamp":
                    value = now
                else:
                    value = AGENT.sub(new_agent, value)
                    value = CHANNEL.sub(new_channel, ID.sub(new_id, value))
                    value = callers.get(value, value)
                fresh.append((key, value))
            out.append(frame(fresh))
        return out


class BenchAmi:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = 0
        self.logins = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_login: Callable[[], None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, user: str = "cti") -> str:
        return f"ami://{user}:{self.secret}@127.0.0.1:{self.port}"

    @property
    def connected(self) -> bool:
        return bool(self._writers)

    def send(self, data: bytes) -> float:
        t0 = time.perf_counter()
        for writer in self._writers:
            writer.write(data)
        return t0

    async def drain(self) -> None:
        for writer in list(self._writers):
            try:
                await writer.drain()
            except ConnectionError:
                pass

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        # The aborted connections end their tasks (EOF); a task cancelled here
        # instead made asyncio's stream callback print a CancelledError trace.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writer.write(BANNER)
        buf = b""
        try:
            while data := await reader.read(65536):
                buf += data
                if len(buf) > MAX_ACTION:
                    return
                while b"\r\n\r\n" in buf:
                    raw, buf = buf.split(b"\r\n\r\n", 1)
                    action = dict(parse_messages(raw.decode("utf-8", "replace"))[0])
                    writer.write(self._reply(action, writer))
        except ConnectionError:
            pass
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    def _reply(self, action: dict[str, str], writer: asyncio.StreamWriter) -> bytes:
        name = action.get("Action", "").lower()
        aid = action.get("ActionID", "")
        ok = [("Response", "Success"), ("ActionID", aid)]
        if name == "login":
            if action.get("Secret") != self.secret:
                return frame(
                    [("Response", "Error"), ("ActionID", aid), ("Message", "Authentication failed")]
                )
            self.logins += 1
            self._writers.append(writer)
            return frame([*ok, ("Message", "Authentication accepted")])
        if name == "ping":
            return frame([*ok, ("Ping", "Pong")])
        if name == "corestatus":
            return frame(
                [
                    *ok,
                    ("CoreStartupDate", "2026-11-23"),
                    ("CoreStartupTime", "09:00:00"),
                    ("CoreReloadDate", "2026-11-23"),
                    ("CoreReloadTime", "09:00:00"),
                    ("CoreCurrentCalls", "0"),
                ]
            )
        lists = {
            "coreshowchannels": "CoreShowChannelsComplete",
            "queuestatus": "QueueStatusComplete",
            "queuesummary": "QueueSummaryComplete",
        }
        if name in lists:
            return frame([*ok, ("EventList", "start"), ("Message", "will follow")]) + frame(
                [
                    ("Event", lists[name]),
                    ("ActionID", aid),
                    ("EventList", "Complete"),
                    ("ListItems", "0"),
                ]
            )
        return frame(
            [("Response", "Error"), ("ActionID", aid), ("Message", "Invalid/unknown command")]
        )
