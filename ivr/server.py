"""The FastAGI server: accepts Asterisk's AGI connections and runs one flow each.

Theory of operation
-------------------
Each accepted connection is checked against the allow-list of Asterisk hosts and
the session cap before any byte is read: refused ones are closed at once (the
log says so once per host per ``reject_log_interval``, with the count
suppressed in between). An accepted connection reads the environment under a
deadline, picks the flow by ``agi_network_script`` (``agi://host:port/<flow>``),
and runs it. The session ends, and the socket is closed, when the flow returns,
the caller hangs up, Asterisk closes the socket (EOF at any point, including in
the middle of the environment), a command times out, or the peer breaks the
protocol. Every connection task is kept in a set; ``close()`` stops accepting,
lets running sessions finish for a grace period, then cancels and awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from ivr.agi import AgiParser, AgiProtocolError
from ivr.ports import IvrPorts
from ivr.session import (
    AgiCommandError,
    AgiCommandTimeout,
    AgiHangup,
    AgiSession,
    SessionLimits,
    read_environment,
)

log = logging.getLogger(__name__)

Flow = Callable[[AgiSession, IvrPorts], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FastAgiSettings:
    host: str = "127.0.0.1"
    port: int = 4573
    allowed_hosts: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    environment_timeout: float = 10.0
    max_sessions: int = 500
    shutdown_grace: float = 5.0
    reject_log_interval: float = 60.0
    limits: SessionLimits = field(default_factory=SessionLimits)


def parse_listen(value: str, default_port: int = 4573) -> tuple[str, int]:
    """``"127.0.0.1:4573"`` / ``"[::1]:4573"`` / ``"0.0.0.0"`` -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"listen address has no host: {value!r}")
    port = int(port_text) if port_text else default_port
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {value!r}")
    return host, port


@dataclass(slots=True)
class ServerCounters:
    accepted: int = 0
    rejected_host: int = 0
    rejected_busy: int = 0
    completed: int = 0
    hangups: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    unknown_flow: int = 0
    flow_errors: int = 0


class FastAgiServer:
    """``async with FastAgiServer(settings, routes, ports) as server: ...``"""

    def __init__(
        self, settings: FastAgiSettings, routes: Mapping[str, Flow], ports: IvrPorts
    ) -> None:
        self.settings = settings
        self.routes = dict(routes)
        self.ports = ports
        self.counters = ServerCounters()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions: dict[asyncio.Task[None], AgiSession] = {}
        self._reject_log: dict[str, tuple[float, int]] = {}
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("FastAGI server is not listening")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def active_sessions(self) -> int:
        return len(self._tasks)

    def sessions(self) -> list[AgiSession]:
        """The sessions running a flow now (for metrics, the lab and tests)."""
        return list(self._sessions.values())

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.settings.host, self.settings.port, limit=65536
        )
        host, port = self.address
        log.info("FastAGI listening on %s:%d (flows: %s)", host, port, ", ".join(self.routes))

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_grace
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FastAgiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_idle(self, within: float) -> None:
        """Wait until no session runs (tests and shutdown)."""
        async with asyncio.timeout(within):
            while self._tasks:
                await asyncio.wait(set(self._tasks))

    # ------------------------------------------------------------------ per connection

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        host = host.removeprefix("::ffff:")  # IPv4-mapped, when listening on "::"
        if host not in self.settings.allowed_hosts:
            self.counters.rejected_host += 1
            self._log_rejection(host, "host not allowed")
            await _close(writer)
            return
        if self._closing or len(self._tasks) >= self.settings.max_sessions:
            self.counters.rejected_busy += 1
            self._log_rejection("busy", f"session cap {self.settings.max_sessions} reached")
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.counters.accepted += 1
        try:
            await self._run_session(host, reader, writer)
        finally:
            self._tasks.discard(task)
            await _close(writer)

    async def _run_session(
        self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = AgiParser()
        uniqueid = "?"
        try:
            env = await read_environment(reader, parser, self.settings.environment_timeout)
            uniqueid = env.uniqueid or "?"
            flow = self.routes.get(env.script)
            if flow is None:
                self.counters.unknown_flow += 1
                log.warning("AGI from %s asked for unknown flow %r", host, env.script[:64])
                return
            session = AgiSession(env, reader, writer, parser, self.settings.limits)
            task = asyncio.current_task()
            assert task is not None
            self._sessions[task] = session
            try:
                await flow(session, self.ports)
            finally:
                del self._sessions[task]
            self.counters.completed += 1
        except AgiHangup as exc:
            self.counters.hangups += 1
            log.info("AGI %s ended: %s", uniqueid, exc)
        except (AgiCommandTimeout, TimeoutError) as exc:
            self.counters.timeouts += 1
            log.warning("AGI %s from %s timed out: %s", uniqueid, host, exc or "environment")
        except (AgiProtocolError, AgiCommandError, UnicodeError) as exc:
            self.counters.protocol_errors += 1
            log.warning("AGI %s from %s: protocol error: %s", uniqueid, host, exc)
        except Exception:
            # A bug in one flow ends that call's session only; the server goes on.
            self.counters.flow_errors += 1
            log.exception("AGI %s: flow failed", uniqueid)

    def _log_rejection(self, key: str, reason: str) -> None:
        now = time.monotonic()
        last, suppressed = self._reject_log.get(key, (float("-inf"), 0))
        if now - last >= self.settings.reject_log_interval:
            more = f" ({suppressed} more since last report)" if suppressed else ""
            log.warning("FastAGI connection refused from %s: %s%s", key, reason, more)
            self._reject_log[key] = (now, 0)
        else:
            self._reject_log[key] = (last, suppressed + 1)
        if len(self._reject_log) > 1024:  # bounded memory under a scan
            self._reject_log.clear()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(2.0):
            await writer.wait_closed()
