"""GSM modem driver: one modem on one serial port, PDU mode, asyncio.

Theory of operation
-------------------
A supervisor task owns the port. It opens it, runs the init sequence (echo off,
numeric errors, SIM PIN, PDU mode, +CNMI routing, +CLIP), reads what was stored
on the SIM while we were away, then marks the modem online. When the port
reports EOF or an I/O error (modem unplugged) every waiting command fails with
ModemDisconnected, health goes down, and the supervisor reopens the port with
exponential backoff, then runs the init sequence again (an unplugged modem comes
back power-cycled, with its defaults).

Commands are strictly one at a time (an asyncio.Lock) because V.250 has no
command tags: the AtParser ties each final result to the one pending command
and routes URCs out to `_on_urc` whenever they arrive, even mid-answer. URC
handlers never wait for a command themselves (the lock may be held by the
command the URC interrupted); follow-ups (+CMGR after +CMTI, +CNMA after +CMT)
run as tasks kept in `_tasks`.

Outgoing messages wait in an in-memory outbox (the gateway's persistent outbox
sits above this driver). The sender task submits them part by part and records
each part's TP-MR as the modem returns it, so a link that drops in the middle of
a multipart message resumes at the first part not yet accepted: a part is
submitted twice only if the port died after the modem took its PDU but before
the +CMGS answer arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from sms_gateway.encoding import ConcatInfo, choose_coding, split_text, ucs2_decode
from sms_gateway.modem.at import AtParser, Final, Overflow, Prompt, Unexpected, Urc
from sms_gateway.modem.errors import (
    CmeError,
    CmsError,
    CommandError,
    ModemDisconnected,
    ModemError,
    ModemProtocolError,
    ModemTimeout,
    PlainError,
    SimPinError,
    TpduError,
)
from sms_gateway.modem.events import (
    DeliveryReport,
    DeliveryState,
    HealthChanged,
    IncomingCall,
    ModemEvent,
    ModemHealth,
    SendResult,
    SmsReceived,
    UssdReceived,
)
from sms_gateway.modem.reassembly import Assembled, Reassembler
from sms_gateway.modem.serial_port import open_port
from sms_gateway.modem.tpdu import Deliver, StatusReport, Submit, decode_pdu, encode_submit

log = logging.getLogger(__name__)

REGISTRATION = {
    0: "not registered",
    1: "home",
    2: "searching",
    3: "denied",
    4: "unknown",
    5: "roaming",
}
MAX_TRACKED_REFERENCES = 1024
MAX_USSD_CODE = 32
EVENT_QUEUE_LIMIT = 10_000
MAX_ORPHAN_REPORTS = 256


@dataclass(frozen=True, slots=True)
class ModemConfig:
    name: str
    port: str
    baudrate: int = 115200
    pin: str | None = field(default=None, repr=False)
    new_message_indication: Literal["cmti", "cmt"] = "cmti"
    status_reports: bool = True
    command_timeout: float = 10.0
    prompt_timeout: float = 20.0
    submit_timeout: float = 60.0
    ussd_timeout: float = 30.0
    health_interval: float = 30.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    multipart_timeout: float = 120.0
    max_parts: int = 10
    concat_ref16: bool = False
    send_attempts: int = 3
    retry_backoff: float = 1.0
    sim_ready_timeout: float = 15.0
    orphan_report_wait: float = 5.0


class SendFailed(ModemError):
    """The message was not sent; `cause` says why (a permanent +CMS ERROR, or retries
    exhausted)."""

    def __init__(self, message_id: str, cause: Exception) -> None:
        super().__init__(f"message {message_id}: {cause}")
        self.message_id = message_id
        self.cause = cause


@dataclass(slots=True)
class _Outgoing:
    message_id: str
    parts: list[Submit]
    future: asyncio.Future[SendResult]
    references: list[int] = field(default_factory=list)
    attempts: int = 0


@dataclass(slots=True)
class _Tracked:
    message_id: str
    states: list[DeliveryState]


def _redact(command: str) -> str:
    return "AT+CPIN=<redacted>" if command.upper().startswith("AT+CPIN=") else command


def _error_from(command: str, result: str) -> CommandError:
    name, _, detail = result.partition(":")
    detail = detail.strip()
    code = int(detail) if detail.isdigit() else None
    if name.strip().upper() == "+CMS ERROR":
        return CmsError(command, code, detail)
    if name.strip().upper() == "+CME ERROR":
        return CmeError(command, code, detail)
    if result.upper() == "ERROR":
        return PlainError(command)
    return CommandError(command, result)


def _fields(args: str) -> list[str]:
    """Split `1,"a,b",3` on commas outside quotes; strip the quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in args:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    out.append("".join(current).strip())
    return out


def decode_ussd(text: str, dcs: int | None) -> str:
    """+CUSD text: UCS-2 data coding (0x48 or the 0x11 language group) arrives as hex."""
    is_ucs2 = dcs is not None and ((dcs & 0xFC) == 0x48 or dcs == 0x11 or ((dcs >> 4) == 0x09
                                   and (dcs & 0x0C) == 0x08))
    if is_ucs2 and len(text) % 4 == 0:
        try:
            return ucs2_decode(bytes.fromhex(text))
        except ValueError:
            return text
    return text


class GsmModem:
    """`await start()`, then `send()`, `ussd()`, `health()`, `async for e in events()`."""

    def __init__(
        self,
        config: ModemConfig,
        *,
        opener: Callable[..., Awaitable[asyncio.BaseTransport]] = open_port,
    ) -> None:
        self.config = config
        self._opener = opener
        self._parser = AtParser()
        self._transport: asyncio.BaseTransport | None = None
        self._lock = asyncio.Lock()
        self._final: asyncio.Future[Final] | None = None
        self._prompt: asyncio.Future[None] | None = None
        self._lost = asyncio.Event()
        self._online = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: asyncio.Queue[ModemEvent] = asyncio.Queue(EVENT_QUEUE_LIMIT)
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_changed = asyncio.Event()
        self._tracked: OrderedDict[int, tuple[_Tracked, int]] = OrderedDict()
        self._reassembler = Reassembler(timeout=config.multipart_timeout)
        self._concat_ref = random.randrange(0x10000)
        self._needs_ack = False
        self._pin_refused = False
        self._ussd: asyncio.Future[UssdReceived] | None = None
        self._ussd_lock = asyncio.Lock()
        self._orphan_reports: OrderedDict[int, tuple[float, StatusReport]] = OrderedDict()
        self._call_until = 0.0
        self._call_reported = True
        self._health = ModemHealth(modem=config.name, up=False, sim="unknown")

    # -- public API --------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._supervise(), "supervisor")
        self._spawn(self._sender(), "sender")
        self._spawn(self._ticker(), "ticker")

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_port(None)
        while self._outbox:
            item = self._outbox.popleft()
            if not item.future.done():
                item.future.set_exception(ModemDisconnected("modem driver closed"))

    def health(self) -> ModemHealth:
        return replace(self._health, outbox=len(self._outbox))

    async def events(self) -> AsyncIterator[ModemEvent]:
        """The driver's events, in order. Meant for one consumer (events are not copied)."""
        while True:
            yield await self._events.get()

    async def wait_online(self) -> None:
        await self._online.wait()

    async def send(self, to: str, text: str, *, message_id: str | None = None) -> SendResult:
        """Queue an SMS and wait until every part is accepted by the modem. Bad input
        (empty text, too many parts, bad number) raises at once; a cancelled caller does
        not take the message out of the outbox."""
        coding = choose_coding(text)
        texts = split_text(text, max_parts=self.config.max_parts, coding=coding)
        self._concat_ref = (self._concat_ref + 1) & 0xFFFF
        ref = self._concat_ref if self.config.concat_ref16 else self._concat_ref & 0xFF
        parts = [
            encode_submit(
                to,
                part,
                alphabet=coding,
                concat=ConcatInfo(ref, len(texts), i + 1) if len(texts) > 1 else None,
                ref16=self.config.concat_ref16,
                status_report=self.config.status_reports,
            )
            for i, part in enumerate(texts)
        ]
        loop = asyncio.get_running_loop()
        item = _Outgoing(message_id or uuid.uuid4().hex, parts, loop.create_future())
        self._outbox.append(item)
        self._outbox_changed.set()
        return await asyncio.shield(item.future)

    async def ussd(self, code: str) -> UssdReceived:
        """Send a USSD request (e.g. "*100#") and wait for the network's +CUSD answer."""
        if not code or len(code) > MAX_USSD_CODE or not all(c in "0123456789*#+" for c in code):
            raise ValueError(f"invalid USSD code {code!r}")
        async with self._ussd_lock:  # one USSD session at a time
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[UssdReceived] = loop.create_future()
            self._ussd = answer
            try:
                await self._command(f'AT+CUSD=1,"{code}",15')
                async with asyncio.timeout(self.config.ussd_timeout):
                    return await answer
            except TimeoutError:
                raise ModemTimeout(
                    f"no USSD answer to {code} in {self.config.ussd_timeout}s"
                ) from None
            finally:
                self._ussd = None

    # -- port and commands ------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run(), name=f"{self.config.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("modem %s: task %s failed", self.config.name, task.get_name(),
                      exc_info=task.exception())

    def _on_data(self, data: bytes) -> None:
        self._parser.feed(data)
        for event in self._parser.events():
            if isinstance(event, Final):
                if self._final is not None and not self._final.done():
                    self._final.set_result(event)
            elif isinstance(event, Prompt):
                if self._prompt is not None and not self._prompt.done():
                    self._prompt.set_result(None)
            elif isinstance(event, Urc):
                self._on_urc(event)
            elif isinstance(event, Overflow):
                log.warning("modem %s: %s", self.config.name, event.reason)
                if self._final is not None and not self._final.done():
                    self._final.set_exception(ModemProtocolError(event.reason))
            elif isinstance(event, Unexpected):
                line = "<redacted>" if "CPIN" in event.line.upper() else event.line[:80]
                log.debug("modem %s: unexpected line %r", self.config.name, line)

    def _on_lost(self, exc: Exception | None) -> None:
        log.warning("modem %s: port lost: %s", self.config.name, exc or "EOF")
        self._drop_port(exc)

    def _drop_port(self, exc: Exception | None) -> None:
        transport, self._transport = self._transport, None
        self._online.clear()
        self._lost.set()
        error = ModemDisconnected(f"port {self.config.port} lost: {exc or 'EOF'}")
        for future in (self._final, self._prompt):
            if future is not None and not future.done():
                future.set_exception(error)
        self._parser = AtParser()
        if transport is not None:
            transport.close()

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ModemDisconnected(f"port {self.config.port} is not open")
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(data)

    async def _command(self, command: str, wait: float | None = None) -> tuple[str, ...]:
        async with self._lock:
            return await self._command_locked(command, wait)

    async def _command_locked(self, command: str, wait: float | None = None) -> tuple[str, ...]:
        loop = asyncio.get_running_loop()
        final: asyncio.Future[Final] = loop.create_future()
        self._final = final
        self._parser.begin(command)
        try:
            self._write(command.encode("ascii") + b"\r")
            log.debug("modem %s: > %s", self.config.name, _redact(command))
            async with asyncio.timeout(wait or self.config.command_timeout):
                result = await final
        except TimeoutError:
            raise ModemTimeout(f"{_redact(command)}: no answer") from None
        finally:
            self._parser.abandon()
            self._final = None
        if not result.ok:
            raise _error_from(_redact(command), result.result)
        return result.lines

    async def _submit(self, part: Submit) -> int:
        """+CMGS: command, wait for "> " (the slow prompt), PDU + Ctrl-Z, +CMGS: <mr>."""
        command = f"AT+CMGS={part.length}"
        async with self._lock:
            loop = asyncio.get_running_loop()
            final: asyncio.Future[Final] = loop.create_future()
            prompt: asyncio.Future[None] = loop.create_future()
            self._final, self._prompt = final, prompt
            self._parser.begin(command, expects_prompt=True)
            try:
                self._write(command.encode("ascii") + b"\r")
                waiting: set[asyncio.Future[Final] | asyncio.Future[None]] = {final, prompt}
                done, _ = await asyncio.wait(
                    waiting, timeout=self.config.prompt_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if final in done:
                    result = final.result()
                    raise _error_from(command, result.result) if not result.ok else \
                        ModemProtocolError(f"{command}: {result.result} without a prompt")
                if prompt not in done:
                    # cancel the half-entered command so the modem returns to command mode
                    with contextlib.suppress(ModemDisconnected):
                        self._write(b"\x1b")
                    raise ModemTimeout(f"{command}: no '> ' prompt in "
                                       f"{self.config.prompt_timeout}s")
                prompt.result()
                self._parser.add_echo(part.hex)
                self._write(part.hex.encode("ascii") + b"\x1a")
                async with asyncio.timeout(self.config.submit_timeout):
                    result = await final
            except TimeoutError:
                raise ModemTimeout(f"{command}: no answer after the PDU") from None
            finally:
                self._parser.abandon()
                self._final = self._prompt = None
                for future in (final, prompt):
                    if future.done() and not future.cancelled():
                        future.exception()  # mark retrieved
                    else:
                        future.cancel()
        if not result.ok:
            raise _error_from(command, result.result)
        for line in result.lines:
            if line.upper().startswith("+CMGS:"):
                reference = _fields(line.partition(":")[2])[0]
                if reference.isdigit():
                    return int(reference) & 0xFF
        raise ModemProtocolError(f"{command}: OK without a valid +CMGS: <mr>")

    # -- supervisor: connect, init, reconnect --------------------------------------------

    async def _supervise(self) -> None:
        delay = self.config.reconnect_initial
        while not self._closing:
            try:
                self._lost.clear()
                self._parser = AtParser()
                self._transport = await self._opener(
                    self.config.port, self.config.baudrate, self._on_data, self._on_lost
                )
                await self._initialise()
                delay = self.config.reconnect_initial
                self._set_health(up=True, last_error=None)
                self._online.set()
                self._spawn(self._read_all_stored(), "stored")
                await self._lost.wait()
                self._set_health(up=False, last_error="port lost")
            except (OSError, ModemError) as exc:
                self._set_health(up=False, last_error=str(exc))
                log.warning("modem %s: down (%s); retry in %.1fs", self.config.name, exc, delay)
                self._drop_port(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max)

    async def _initialise(self) -> None:
        for attempt in range(3):
            try:
                await self._command("AT", wait=2.0)
                break
            except ModemTimeout:
                if attempt == 2:
                    raise
        # ATZ restores the stored profile, which usually turns echo back on: the parser
        # drops echoed lines, so the answer to ATE0 is read correctly either way.
        await self._command("ATZ")
        await self._command("ATE0")
        await self._command("AT+CMEE=1")
        await self._unlock_sim()
        await self._command("AT+CMGF=0")
        try:
            lines = await self._command("AT+CSMS?")
            service = _fields(lines[0].partition(":")[2])[0] if lines else "0"
            self._needs_ack = service == "1"
        except CommandError:
            self._needs_ack = False
        mt = 1 if self.config.new_message_indication == "cmti" else 2
        # Quirk: some modems cannot route status reports directly (+CDS, ds=1) and only
        # store them (+CDSI, ds=2); both end in the same DeliveryReport.
        for ds in (1, 2) if self.config.status_reports else (0,):
            try:
                await self._command(f"AT+CNMI=2,{mt},0,{ds},0")
                break
            except CommandError:
                if ds == 2 or not self.config.status_reports:
                    raise
        for optional in ('AT+CSCS="GSM"', "AT+CLIP=1", "AT+CREG=1"):
            try:
                await self._command(optional)
            except CommandError as exc:
                log.info("modem %s: %s unsupported (%s)", self.config.name, optional, exc)
        await self._poll_health()

    async def _unlock_sim(self) -> None:
        """Theory: +CPIN? says READY, SIM PIN or SIM PUK. We enter the configured PIN once;
        if the SIM refuses it we never try again on this run (three wrong PINs lock the
        SIM behind its PUK), and we never enter a PUK."""
        state = await self._sim_state()
        if state == "READY":
            self._set_health(sim="ready")
            return
        if state == "SIM PIN":
            if self.config.pin is None or self._pin_refused:
                self._set_health(sim="PIN required")
                raise SimPinError("the SIM needs a PIN and none (or a refused one) is set")
            try:
                await self._command(f'AT+CPIN="{self.config.pin}"')
            except CmeError as exc:
                if exc.code == 16:
                    self._pin_refused = True
                    self._set_health(sim="PIN refused")
                    raise SimPinError("the SIM refused the configured PIN") from None
                raise
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.sim_ready_timeout
            while (state := await self._sim_state()) != "READY":
                if loop.time() > deadline:
                    raise SimPinError(f"SIM not ready after PIN: {state}")
                await asyncio.sleep(0.2)
            self._set_health(sim="ready")
            return
        self._set_health(sim=state.lower())
        raise SimPinError(f"SIM state {state}: needs a person (PUK, not inserted...)")

    async def _sim_state(self) -> str:
        try:
            lines = await self._command("AT+CPIN?")
        except CmeError as exc:
            if exc.code == 10:
                return "NOT INSERTED"
            if exc.code == 14:
                return "BUSY"
            raise
        for line in lines:
            if line.upper().startswith("+CPIN:"):
                return line.partition(":")[2].strip().upper()
        raise ModemProtocolError("AT+CPIN? without +CPIN:")

    async def _poll_health(self) -> None:
        lines = await self._command("AT+CSQ")
        rssi: int | None = None
        for line in lines:
            if line.upper().startswith("+CSQ:"):
                value = _fields(line.partition(":")[2])[0]
                rssi = int(value) if value.isdigit() and int(value) <= 31 else None
        registration = self._health.registration
        for line in await self._command("AT+CREG?"):
            if line.upper().startswith("+CREG:"):
                values = _fields(line.partition(":")[2])
                if len(values) >= 2 and values[1].isdigit() and len(values[1]) < 4:
                    registration = REGISTRATION.get(int(values[1]), values[1])
        operator: str | None = None
        with contextlib.suppress(CommandError):
            for line in await self._command("AT+COPS?"):
                values = _fields(line.partition(":")[2])
                if line.upper().startswith("+COPS:") and len(values) >= 3:
                    operator = values[2]
        self._set_health(
            signal_rssi=rssi,
            signal_dbm=None if rssi is None else -113 + 2 * rssi,
            registration=registration,
            operator=operator,
        )

    def _set_health(self, **changes: object) -> None:
        updated = replace(self._health, **changes)  # type: ignore[arg-type]
        if updated != self._health:
            self._health = updated
            self._emit(HealthChanged(self.health()))

    def _emit(self, event: ModemEvent) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            log.error("modem %s: event queue full, %s dropped", self.config.name,
                      type(event).__name__)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        next_health = loop.time() + self.config.health_interval
        while True:
            await asyncio.sleep(0.5)
            for assembled in self._reassembler.expire(loop.time()):
                self._emit_sms(assembled)
            self._expire_orphans(loop.time())
            if not self._call_reported and loop.time() >= self._call_until - 7.0:
                self._report_call(None)
            if loop.time() >= next_health and self._online.is_set():
                next_health = loop.time() + self.config.health_interval
                try:
                    await self._poll_health()
                except ModemError as exc:
                    log.info("modem %s: health poll failed: %s", self.config.name, exc)

    # -- outbox -----------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            while not self._outbox:
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
            await self._online.wait()
            item = self._outbox[0]
            try:
                while len(item.references) < len(item.parts):
                    reference = await self._submit(item.parts[len(item.references)])
                    item.references.append(reference)
                    self._track(reference, item, len(item.references) - 1)
            except CommandError as exc:
                item.attempts += 1
                if exc.transient and item.attempts < self.config.send_attempts:
                    log.info("modem %s: %s, retry %d", self.config.name, exc, item.attempts)
                    await asyncio.sleep(self.config.retry_backoff * 2 ** (item.attempts - 1))
                    continue
                self._outbox.popleft()
                item.future.set_exception(SendFailed(item.message_id, exc))
                continue
            except (ModemDisconnected, ModemTimeout, ModemProtocolError) as exc:
                # the part was not accepted (or we cannot know): keep it, resend when online.
                # A modem that stops answering is reset by reopening the port.
                log.info("modem %s: send of %s interrupted: %s", self.config.name,
                         item.message_id, exc)
                if not isinstance(exc, ModemDisconnected):
                    self._drop_port(exc)
                await asyncio.sleep(0.1)
                continue
            self._outbox.popleft()
            if not item.future.done():
                item.future.set_result(SendResult(item.message_id, tuple(item.references)))

    def _track(self, reference: int, item: _Outgoing, part: int) -> None:
        tracked = next(
            (t for t, _ in self._tracked.values() if t.message_id == item.message_id), None
        ) or _Tracked(item.message_id, ["pending"] * len(item.parts))
        self._tracked.pop(reference, None)
        self._tracked[reference] = (tracked, part)
        while len(self._tracked) > MAX_TRACKED_REFERENCES:
            self._tracked.popitem(last=False)
        orphan = self._orphan_reports.pop(reference, None)
        if orphan is not None:
            self._on_status_report(orphan[1])

    # -- URCs ----------------------------------------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        name = urc.name
        if name in ("+CMTI", "+CDSI"):
            values = _fields(urc.args)
            if len(values) == 2 and values[1].isdigit() and len(values[1]) < 6:
                self._spawn(self._read_stored(int(values[1])), "cmgr")
        elif name in ("+CMT", "+CDS"):
            if urc.pdu is not None:
                self._handle_pdu(urc.pdu, None)
            if self._needs_ack:
                self._spawn(self._ack(), "cnma")
        elif name in ("RING", "+CRING"):
            self._on_ring()
        elif name == "+CLIP":
            values = _fields(urc.args)
            self._on_ring()
            self._report_call(values[0] or None)
        elif name == "+CUSD":
            self._on_cusd(urc.args)
        elif name in ("+CREG", "+CGREG"):
            values = _fields(urc.args)
            stat = values[0] if len(values) in (1, 3) else values[1] if len(values) > 1 else ""
            if name == "+CREG" and stat.isdigit() and len(stat) < 4:
                self._set_health(registration=REGISTRATION.get(int(stat), stat))
        elif name == "+CPIN":
            if urc.args.strip().upper() == "READY":
                self._set_health(sim="ready")

    # Theory: a call rings every few seconds (RING, +CLIP, RING, +CLIP...). One call is one
    # IncomingCall: a RING more than 8 s after the last one starts a new call. We report
    # at the first +CLIP, or after one second without +CLIP (CLIP off or withheld).
    def _on_ring(self) -> None:
        now = asyncio.get_running_loop().time()
        if now > self._call_until:
            self._call_reported = False
        self._call_until = now + 8.0

    def _report_call(self, number: str | None) -> None:
        if self._call_reported:
            return
        self._call_reported = True
        self._emit(IncomingCall(self.config.name, number, datetime.now(UTC)))

    def _on_cusd(self, args: str) -> None:
        values = _fields(args)
        status = int(values[0]) if values and values[0].isdigit() and len(values[0]) < 4 else 4
        dcs = int(values[2]) if len(values) > 2 and values[2].isdigit() and len(values[2]) < 4 \
            else None
        text = decode_ussd(values[1], dcs) if len(values) > 1 else ""
        event = UssdReceived(self.config.name, status, text)
        if self._ussd is not None and not self._ussd.done():
            self._ussd.set_result(event)
        else:
            self._emit(event)

    async def _ack(self) -> None:
        try:
            await self._command("AT+CNMA")
        except ModemError as exc:
            log.warning("modem %s: +CNMA failed: %s", self.config.name, exc)

    async def _read_stored(self, index: int) -> None:
        try:
            lines = await self._command(f"AT+CMGR={index}")
            pdu = next((ln for ln in lines if not ln.startswith("+")), None)
            if pdu is not None and self._handle_pdu(pdu, index):
                await self._command(f"AT+CMGD={index}")
        except ModemError as exc:
            # left on the SIM: read again by +CMGL after the next (re)connect
            log.warning("modem %s: reading message %d failed: %s", self.config.name, index, exc)

    async def _read_all_stored(self) -> None:
        try:
            lines = await self._command("AT+CMGL=4", wait=60.0)
        except ModemError as exc:
            log.warning("modem %s: +CMGL failed: %s", self.config.name, exc)
            return
        for header, pdu in zip(lines[::2], lines[1::2], strict=False):
            index = _fields(header.partition(":")[2])[0]
            if index.isdigit() and len(index) < 6 and self._handle_pdu(pdu, int(index)):
                with contextlib.suppress(ModemError):
                    await self._command(f"AT+CMGD={index}")

    def _handle_pdu(self, pdu: str, index: int | None) -> bool:
        """Decode and dispatch one PDU. False when it cannot be decoded (kept on the SIM)."""
        try:
            decoded = decode_pdu(pdu)
        except TpduError as exc:
            log.warning("modem %s: undecodable PDU at index %s: %s", self.config.name, index, exc)
            return False
        if isinstance(decoded, StatusReport):
            self._on_status_report(decoded)
        else:
            self._on_deliver(decoded)
        return True

    def _on_deliver(self, sms: Deliver) -> None:
        if sms.concat is None or sms.concat.total == 1:
            self._emit(SmsReceived(self.config.name, sms.sender, sms.text, sms.timestamp, 1))
            return
        for assembled in self._reassembler.add(
            sender=sms.sender,
            reference=sms.concat.reference,
            total=sms.concat.total,
            sequence=sms.concat.sequence,
            text=sms.text,
            received_at=sms.timestamp,
            now=asyncio.get_running_loop().time(),
        ):
            self._emit_sms(assembled)

    def _emit_orphan(self, report: StatusReport) -> None:
        self._emit(DeliveryReport(self.config.name, None, report.reference, report.recipient,
                                  report.state, report.status, report.state))

    def _expire_orphans(self, now: float) -> None:
        for reference, (seen, report) in list(self._orphan_reports.items()):
            if now - seen >= self.config.orphan_report_wait:
                del self._orphan_reports[reference]
                self._emit_orphan(report)

    def _emit_sms(self, assembled: Assembled) -> None:
        self._emit(
            SmsReceived(
                self.config.name,
                assembled.sender,
                assembled.text,
                assembled.received_at,
                assembled.parts,
                assembled.complete,
                assembled.missing,
            )
        )

    # Theory: a fast network can return the status report in the same read as the +CMGS
    # answer, before the sender task has recorded the reference. A report for an unknown
    # reference waits `orphan_report_wait` seconds for `_track`, then goes out with message_id None.
    def _on_status_report(self, report: StatusReport) -> None:
        entry = self._tracked.get(report.reference)
        state = report.state
        if entry is None:
            self._orphan_reports[report.reference] = (asyncio.get_running_loop().time(), report)
            while len(self._orphan_reports) > MAX_ORPHAN_REPORTS:
                self._emit_orphan(self._orphan_reports.popitem(last=False)[1][1])
            return
        tracked, part = entry
        tracked.states[part] = state
        if "failed" in tracked.states:
            overall: DeliveryState = "failed"
        elif all(s == "delivered" for s in tracked.states):
            overall = "delivered"
        else:
            overall = "pending"
        self._emit(DeliveryReport(self.config.name, tracked.message_id, report.reference,
                                  report.recipient, state, report.status, overall))
