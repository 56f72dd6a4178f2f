"""The FastAGI server over real loopback TCP, driven by a client that plays
Asterisk's side of the wire byte for byte (including the bad cases Asterisk
itself cannot be made to produce on demand)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import pytest

from ivr.ports import IvrPorts
from ivr.reference_ports import MemoryPorts
from ivr.server import FastAgiServer, FastAgiSettings, Flow, parse_listen
from ivr.session import AgiHangup, AgiSession, SessionLimits

WITHIN = 10.0


def env_block(script: str = "probe", uniqueid: str = "1700000000.1") -> bytes:
    return (
        b"agi_network: yes\n"
        + f"agi_network_script: {script}\n".encode()
        + b"agi_channel: PJSIP/trunk-00000001\n"
        + f"agi_uniqueid: {uniqueid}\n".encode()
        + b"agi_callerid: 79160000001\n\n"
    )


class Events:
    """What the test flows saw."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.changed = asyncio.Event()

    def add(self, item: str) -> None:
        self.items.append(item)
        self.changed.set()

    async def wait_for(self, item: str) -> None:
        async with asyncio.timeout(WITHIN):
            while item not in self.items:
                self.changed.clear()
                await self.changed.wait()


def make_routes(events: Events) -> Mapping[str, Flow]:
    async def probe(session: AgiSession, ports: IvrPorts) -> None:
        events.add("started")
        try:
            session.step = "greeting"
            digit = await session.stream_file("hello-world", "12")
            events.add(f"played:{digit}")
            value = await session.get_variable("CTI_QUEUE")
            events.add(f"var:{value}")
        except AgiHangup:
            events.add(f"hangup:{session.step}")
            raise

    async def blocker(session: AgiSession, ports: IvrPorts) -> None:
        events.add("blocked")
        await session.verbose("waiting forever", 1)

    return {"probe": probe, "blocker": blocker}


@pytest.fixture
async def events() -> Events:
    return Events()


async def start_server(events: Events, **overrides: object) -> FastAgiServer:
    settings = FastAgiSettings(host="127.0.0.1", port=0, **overrides)  # type: ignore[arg-type]
    server = FastAgiServer(settings, make_routes(events), MemoryPorts().ports())
    await server.start()
    return server


@pytest.fixture
async def server(events: Events) -> AsyncIterator[FastAgiServer]:
    srv = await start_server(events)
    yield srv
    await srv.close()


async def connect(server: FastAgiServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address
    return await asyncio.open_connection(host, port)


async def read_line(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WITHIN):
        return await reader.readline()


async def test_whole_session_sent_byte_by_byte(server: FastAgiServer, events: Events) -> None:
    reader, writer = await connect(server)
    for i, byte in enumerate(env_block()):
        writer.write(bytes([byte]))
        if i % 7 == 0:
            await writer.drain()
    assert await read_line(reader) == b'STREAM FILE hello-world 12\n'
    for byte in b"200 result=50 endpos=1200\n":
        writer.write(bytes([byte]))
        await writer.drain()
    assert await read_line(reader) == b"GET VARIABLE CTI_QUEUE\n"
    writer.write(b"200 result=1 (sales (vip))\n")
    await writer.drain()
    assert await read_line(reader) == b""  # the flow ended: the server closed
    await server.wait_idle(WITHIN)
    assert events.items == ["started", "played:2", "var:sales (vip)"]
    assert server.counters.completed == 1
    writer.close()


async def test_eof_mid_environment_ends_session(server: FastAgiServer, events: Events) -> None:
    reader, writer = await connect(server)
    writer.write(env_block()[:40])
    await writer.drain()
    writer.write_eof()
    assert await read_line(reader) == b""
    await server.wait_idle(WITHIN)
    assert server.counters.hangups == 1
    assert events.items == []
    writer.close()


async def test_hangup_mid_command(server: FastAgiServer, events: Events) -> None:
    reader, writer = await connect(server)
    writer.write(env_block())
    assert (await read_line(reader)).startswith(b"STREAM FILE")
    writer.write(b"HANGUP\n200 result=-1 endpos=4000\n")
    await writer.drain()
    await events.wait_for("hangup:greeting")
    assert await read_line(reader) == b""  # closed without sending anything else
    await server.wait_idle(WITHIN)
    assert server.counters.hangups == 1
    writer.close()


async def test_result_minus_one_then_probe_finds_dead_channel(
    server: FastAgiServer, events: Events
) -> None:
    reader, writer = await connect(server)
    writer.write(env_block())
    assert (await read_line(reader)).startswith(b"STREAM FILE")
    writer.write(b"200 result=-1 endpos=4000\n")
    assert await read_line(reader) == b"CHANNEL STATUS\n"
    writer.write(b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n")
    await writer.drain()
    await events.wait_for("hangup:greeting")
    assert await read_line(reader) == b""
    writer.close()


async def test_missing_sound_file_is_not_a_hangup(server: FastAgiServer, events: Events) -> None:
    reader, writer = await connect(server)
    writer.write(env_block())
    assert (await read_line(reader)).startswith(b"STREAM FILE")
    writer.write(b"200 result=-1 endpos=0\n")  # what Asterisk answers for a missing file
    assert await read_line(reader) == b"CHANNEL STATUS\n"
    writer.write(b"200 result=6\n")
    assert await read_line(reader) == b"GET VARIABLE CTI_QUEUE\n"
    writer.write(b"200 result=0\n")
    assert await read_line(reader) == b""
    await server.wait_idle(WITHIN)
    assert events.items == ["started", "played:None", "var:None"]
    writer.close()


async def test_eof_mid_command(server: FastAgiServer, events: Events) -> None:
    reader, writer = await connect(server)
    writer.write(env_block())
    assert (await read_line(reader)).startswith(b"STREAM FILE")
    writer.write(b"200 res")  # half a result, then the socket closes
    await writer.drain()
    writer.write_eof()
    await events.wait_for("hangup:greeting")
    await server.wait_idle(WITHIN)
    writer.close()


async def test_unknown_flow_and_garbage_are_closed(server: FastAgiServer) -> None:
    reader, writer = await connect(server)
    writer.write(env_block("no-such-flow"))
    assert await read_line(reader) == b""
    writer.close()
    reader, writer = await connect(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await read_line(reader) == b""
    writer.close()
    await server.wait_idle(WITHIN)
    assert server.counters.unknown_flow == 1
    assert server.counters.protocol_errors == 1


async def test_disallowed_host_closed_at_once_and_logged_once(
    events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ivr.server")
    srv = await start_server(events, allowed_hosts=frozenset({"192.0.2.10"}))
    try:
        for _ in range(5):
            reader, writer = await connect(srv)
            assert await read_line(reader) == b""  # closed before any byte
            writer.close()
        assert srv.counters.rejected_host == 5
        assert srv.counters.accepted == 0
        refused = [r for r in caplog.records if "refused from 127.0.0.1" in r.getMessage()]
        assert len(refused) == 1
        assert events.items == []
    finally:
        await srv.close()


async def test_per_command_timeout(events: Events) -> None:
    limits = SessionLimits(command_timeout=0.3, media_timeout=0.3)
    srv = await start_server(events, limits=limits)
    try:
        reader, writer = await connect(srv)
        writer.write(env_block())
        assert (await read_line(reader)).startswith(b"STREAM FILE")
        # never answer: the server gives up and closes
        assert await read_line(reader) == b""
        await srv.wait_idle(WITHIN)
        assert srv.counters.timeouts == 1
        writer.close()
    finally:
        await srv.close()


async def test_environment_timeout(events: Events) -> None:
    srv = await start_server(events, environment_timeout=0.3)
    try:
        reader, writer = await connect(srv)
        writer.write(b"agi_network: yes\n")  # and then nothing
        assert await read_line(reader) == b""
        await srv.wait_idle(WITHIN)
        assert srv.counters.timeouts == 1
        writer.close()
    finally:
        await srv.close()


async def test_flood_of_connections_is_bounded(events: Events) -> None:
    srv = await start_server(events, max_sessions=3, shutdown_grace=0.2)
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for n in range(3):
            reader, writer = await connect(srv)
            writer.write(env_block("blocker", f"1700000000.{n}"))
            assert await read_line(reader) == b'VERBOSE "waiting forever" 1\n'
            clients.append((reader, writer))
        assert srv.active_sessions == 3
        for _ in range(20):
            reader, writer = await connect(srv)
            assert await read_line(reader) == b""  # over the cap: closed at once
            writer.close()
        assert srv.counters.rejected_busy == 20
        assert srv.active_sessions == 3
    finally:
        await srv.close()  # graceful: waits 0.2 s, then cancels the blocked sessions
    assert srv.active_sessions == 0
    for reader, writer in clients:
        assert await read_line(reader) == b""
        writer.close()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:4573") == ("127.0.0.1", 4573)
    assert parse_listen("0.0.0.0") == ("0.0.0.0", 4573)
    assert parse_listen("[::1]:5000") == ("::1", 5000)
    with pytest.raises(ValueError):
        parse_listen(":4573")
    with pytest.raises(ValueError):
        parse_listen("host:99999")
