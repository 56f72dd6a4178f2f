"""The process-wide pjsua2 Endpoint, owned by one dedicated thread.

Theory of operation: pjsua is a process singleton and is not safe to drive
from several threads, so one daemon thread ("pjsua2") creates the Endpoint
with ``threadCnt=0`` and ``mainThreadOnly=True`` and loops on
``libHandleEvents(10 ms)``. Every other thread (asyncio loops included) hands
it work through a thread-safe queue (``Engine.run``) and awaits the result as
an asyncio future. pjsua callbacks run on that thread too; phones turn them
into plain snapshots and post them to their own asyncio loop with
``call_soon_threadsafe``. Teardown follows pjproject #4353: hang up, drop
every Call and Account object and ``gc.collect()`` before ``libDestroy()``.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import gc
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pjsua2 as pj

log = logging.getLogger("cti.softphone.pjsua")

T = TypeVar("T")

PJ_LOG_LEVEL = int(os.environ.get("CTI_SOFTPHONE_PJ_LOG_LEVEL", "2"))  # 5-6: SIP traces
MAX_CALLS = 32
MAX_TRANSPORTS = 8  # PJSUA_MAX_TRANSPORTS; PJSUA_MAX_ACC is 8 too
MAX_PARKED = 4
_STOP = object()


class EngineError(RuntimeError):
    """The pjsua2 engine could not start or is gone."""


class PortOwner(Protocol):
    """What the engine asks of a phone when a request arrives on a local port."""

    def account_index(self) -> int | None: ...


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    def write(self, entry: Any) -> None:
        text = str(entry.msg).rstrip()
        if text:
            log.log(logging.WARNING if int(entry.level) <= 1 else logging.INFO, "%s", text)


class _Endpoint(pj.Endpoint):  # type: ignore[misc]
    """Routes each incoming request to the phone that owns the port it names.

    Quirk worked around: pjsua picks the account of an incoming INVITE by the
    user part and domain of its Request-URI, so a call to
    ``sip:+7916...@127.0.0.1:PORT`` (the lab's carrier trunk dialling the
    customer phone) would land on whichever account shares the domain. The
    Request-URI port says which phone was meant, so we pick by port.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine

    def onSelectAccount(self, prm: Any) -> None:
        from cti.softphone.sip_text import SipTextError, parse_head, uri_port

        try:
            port = uri_port(parse_head(str(prm.rdata.wholeMsg)).request_uri)
        except SipTextError:
            return
        owner = self._engine.owners.get(port) if port is not None else None
        index = owner.account_index() if owner is not None else None
        if index is not None:
            prm.accountIndex = index


class Engine:
    """One per process; see the module docstring."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="pjsua2", daemon=True)
        self.owners: dict[int, PortOwner] = {}
        self.keepalive: set[object] = set()
        self.graveyard: list[object] = []
        self.morgue: list[object] = []
        self.parked: dict[tuple[str, int], int] = {}
        self.ports: set[int] = set()
        self._auto_ports: set[int] = set()
        self.ep: Any = None
        self._stopped = False

    # -- lifecycle (blocking; call from a worker thread or at exit) --------
    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EngineError("pjsua2 engine did not start in time")
        if self._startup_error is not None:
            raise EngineError(f"pjsua2 engine failed to start: {self._startup_error}")

    def stop(self, timeout: float = 20.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise EngineError("pjsua2 engine thread did not stop in time")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    @property
    def on_engine_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # -- work submission ----------------------------------------------------
    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread and await its result."""
        if not self.alive:
            raise EngineError("pjsua2 engine is not running (shut down?)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result = fn()
            except Exception as exc:  # handed to the awaiting task, not swallowed
                _post(loop, _fail, fut, exc)
            else:
                _post(loop, _succeed, fut, result)

        self._jobs.put(job)
        return await fut

    # -- transports (engine thread) ------------------------------------------
    # Quirk worked around: a closed UDP transport keeps its socket while any
    # transaction still references it (up to 32 s on UDP), so reopening the
    # same port (the lab carrier port, test after test) fails with
    # EADDRINUSE. Closed phones park their transport; the next phone asking
    # for that port (or for any port, when it asks for port 0) takes it over.
    # pjsua has MAX_TRANSPORTS slots: parked ones are closed, oldest and
    # auto-port first, when more are needed.
    def take_transport(self, bind: str, port: int) -> tuple[int, int]:
        for key in list(self.parked):
            if key[0] == bind and (port == 0 or key[1] == port):
                return self.parked.pop(key), key[1]
        while self.parked and len(self.owners) + len(self.parked) >= MAX_TRANSPORTS:
            self._close_parked()
        tcfg = pj.TransportConfig()
        tcfg.port = port
        tcfg.boundAddress = bind
        tid = int(self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg))
        name = str(self.ep.transportGetInfo(tid).localName)
        real_port = int(name.rsplit(":", 1)[1])
        self.ports.add(real_port)
        if port == 0:
            self._auto_ports.add(real_port)
        return tid, real_port

    def park_transport(self, bind: str, port: int, tid: int) -> None:
        self.parked[(bind, port)] = tid
        while len(self.parked) > MAX_PARKED:
            self._close_parked()

    def _close_parked(self) -> None:
        keys = sorted(self.parked, key=lambda k: k[1] not in self._auto_ports)
        key = keys[0]
        tid = self.parked.pop(key)
        self.ports.discard(key[1])
        self._auto_ports.discard(key[1])
        try:
            self.ep.transportClose(tid)
        except pj.Error as exc:
            log.debug("transport close: %s", exc.info())

    # -- the thread ---------------------------------------------------------
    def _main(self) -> None:
        writer = _LogWriter()
        try:
            ep = _Endpoint(self)
            _quiet_lib_create(ep)
            cfg = pj.EpConfig()
            cfg.uaConfig.threadCnt = 0
            cfg.uaConfig.mainThreadOnly = True
            cfg.uaConfig.maxCalls = MAX_CALLS
            cfg.uaConfig.userAgent = "cti-softphone"
            cfg.logConfig.level = PJ_LOG_LEVEL
            cfg.logConfig.consoleLevel = PJ_LOG_LEVEL
            cfg.logConfig.msgLogging = 1 if PJ_LOG_LEVEL >= 5 else 0
            cfg.logConfig.writer = writer
            cfg.medConfig.noVad = True
            # The sound device (null here) clocks the conference bridge, which
            # clocks every stream's RTP, RFC 2833 events included. pjsua closes
            # an idle device after 1 s by default and DTMF then stalls mid-way.
            cfg.medConfig.sndAutoCloseTime = -1
            ep.libInit(cfg)
            ep.audDevManager().setNullDev()
            ep.libStart()
        except Exception as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self.ep = ep
        self._ready.set()
        try:
            while True:
                ep.libHandleEvents(10)
                if self._drain():
                    break
                if self.graveyard:
                    self.graveyard.clear()
        finally:
            self._teardown()
            del writer

    def _drain(self) -> bool:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return False
            if job is _STOP:
                return True
            assert callable(job)
            job()

    def _teardown(self) -> None:
        ep = self.ep
        try:
            ep.hangupAllCalls()
            for _ in range(200):
                ep.libHandleEvents(10)
                if not self.keepalive:
                    break
        except pj.Error as exc:
            log.debug("hangup at teardown: %s", exc.info())
        for obj in list(self.keepalive):
            shutdown = getattr(obj, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except pj.Error as exc:
                    log.debug("account shutdown: %s", exc.info())
        self.keepalive.clear()
        self.graveyard.clear()
        self.morgue.clear()
        self.owners.clear()
        gc.collect()
        ep.libDestroy()
        self.ep = None
        del ep
        gc.collect()


def _quiet_lib_create(ep: Any) -> None:
    """libCreate() logs a few lines to C stdout before any log config applies: mute fd 1."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        try:
            ep.libCreate()
        finally:
            libc.fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        log.debug("event loop closed; dropped a pjsua2 result")


def _succeed(fut: asyncio.Future[T], result: T) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


_lock = threading.Lock()
_engine: Engine | None = None


def get_engine_blocking() -> Engine:
    """The process engine, started on first use (blocking)."""
    global _engine
    with _lock:
        if _engine is None or not _engine.alive:
            engine = Engine()
            engine.start()
            _engine = engine
        return _engine


async def get_engine() -> Engine:
    engine = _engine
    if engine is not None and engine.alive:
        return engine
    return await asyncio.to_thread(get_engine_blocking)


def shutdown_engine_blocking() -> None:
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.stop()


async def shutdown_engine() -> None:
    """Hang up everything, free every pjsua2 object and destroy the library."""
    await asyncio.to_thread(shutdown_engine_blocking)


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    """Hand ``fn(*args)`` to ``loop`` from the engine thread (dropped if the loop is gone)."""
    _post(loop, fn, *args)


atexit.register(shutdown_engine_blocking)
