"""Asyncio SMPP 3.4 ESME: one bind_transceiver link to an SMSC, fed by the outbox.

Theory of operation
-------------------
``SmppClient.run()`` loops: connect -> bind_transceiver -> session -> reconnect
after an exponential backoff (reset once a bind succeeds). A refused bind sets
health state "bind_refused" and retries on the same backoff, logging a warning
only when the refusal first happens or its status changes (no log flood).

A session runs three tasks: the reader (frames, decodes and dispatches every
PDU), the sender and the watchdog. The sender takes part jobs from the ready
queue while fewer than ``window`` submit_sm are outstanding, spaced at least
1/tps apart (so no one-second bucket holds more than ``tps``), and pauses after
ESME_RTHROTTLED / ESME_RMSGQFUL, putting the refused part back at the head of
the queue: nothing is dropped. The watchdog sends enquire_link when the link is
idle and drops the link when an enquire_link or a submit_sm stays unanswered
beyond ``response_timeout``. Any framing or decoding error, EOF or unbind ends
the session.

Exactly-once bias: a part's SMSC id is written to the outbox as soon as its
submit_sm_resp arrives, and a part with an id is never sent again. When a
session ends, the parts in flight without a response (at most ``window``) go
back to the head of the queue and are counted in ``resent_after_drop``: they
are the only possible duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from sms_gateway import pdu as P
from sms_gateway.encoding import (
    Coding,
    SmsEncodingError,
    build_concat_udh,
    choose_coding,
    encode_text,
    split_text,
)
from sms_gateway.mo import IncomingSms, MoPartStore, MoReassembler, StoredPart, multipart_info
from sms_gateway.outbox import FINAL_STATUSES, OutboundSms, OutboxStore
from sms_gateway.receipts import FINAL_STATES as FINAL_PART_STATES
from sms_gateway.receipts import ReceiptError, combine_states, id_forms, parse_receipt

log = logging.getLogger(__name__)

LinkState = Literal["stopped", "connecting", "binding", "bound", "bind_refused", "down"]
READ_CHUNK: Final = 65536
MAX_DESTINATION: Final = 20
MO_RETRY_INTERVAL: Final = 5.0


class InvalidDestinationError(ValueError):
    """A destination number the SMSC would refuse anyway."""


class SmppConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SmppConfig:
    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    source_addr: str = ""
    system_type: str = ""
    name: str = "smpp"
    window: int = 10
    tps: float | None = None
    enquire_link_interval: float = 30.0
    response_timeout: float = 10.0
    connect_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    throttle_backoff_min: float = 0.1
    throttle_backoff_max: float = 5.0
    max_parts: int = 10
    use_message_payload: bool = False
    ref16: bool = False
    mo_timeout: float = 60.0

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> SmppConfig:
        """``smpp://system_id:password@host:port?source_addr=...&window=10&tps=30``."""
        parts = urlsplit(url)
        if parts.scheme != "smpp" or not parts.hostname or not parts.username:
            raise SmppConfigError("expected smpp://system_id:password@host:port")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        values: dict[str, object] = {
            "host": parts.hostname,
            "port": parts.port or 2775,
            "system_id": unquote(parts.username),
            "password": unquote(parts.password or ""),
        }
        converters: dict[str, Callable[[str], object]] = {
            "source_addr": str,
            "system_type": str,
            "name": str,
            "window": int,
            "tps": float,
            "enquire_link_interval": float,
            "response_timeout": float,
            "reconnect_min": float,
            "reconnect_max": float,
            "max_parts": int,
            "use_message_payload": lambda v: v.lower() in ("1", "true", "yes"),
            "ref16": lambda v: v.lower() in ("1", "true", "yes"),
            "mo_timeout": float,
        }
        for key, raw in query.items():
            conv = converters.get(key)
            if conv is None:
                raise SmppConfigError(f"unknown SMPP URL parameter {key!r}")
            try:
                values[key] = conv(raw)
            except ValueError as exc:
                raise SmppConfigError(f"bad value for {key!r}") from exc
        values.update(overrides)
        config = cls(**values)  # type: ignore[arg-type]
        if (
            config.window < 1
            or config.max_parts < 1
            or (config.tps is not None and config.tps <= 0)
        ):
            raise SmppConfigError("window, max_parts and tps must be positive")
        return config


@dataclass(frozen=True, slots=True)
class LinkHealth:
    name: str
    state: LinkState
    last_error: str
    bind_failures: int
    reconnects: int
    in_flight: int
    queued_parts: int
    submitted_parts: int
    resent_after_drop: int
    throttled: int
    unknown_receipts: int


@dataclass(frozen=True, slots=True)
class _PartJob:
    key: str
    index: int
    body: P.ShortMessage


class BindRefusedError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused with status 0x{status:08x}")
        self.status = status


class _SessionEnded(Exception):
    pass


StatusCallback = Callable[[OutboundSms], Awaitable[None]]
IncomingCallback = Callable[[IncomingSms], Awaitable[None]]


def validate_destination(number: str) -> str:
    digits = number[1:] if number.startswith("+") else number
    if not digits.isdigit() or not 3 <= len(digits) <= MAX_DESTINATION - 1:
        raise InvalidDestinationError(f"invalid destination number {number!r}")
    return digits if number.startswith("+") else number


class SmppClient:
    def __init__(
        self,
        config: SmppConfig,
        outbox: OutboxStore,
        *,
        on_status: StatusCallback | None = None,
        on_incoming: IncomingCallback | None = None,
        mo_parts: MoPartStore | None = None,
    ) -> None:
        self.config = config
        self._outbox = outbox
        self._mo_parts = mo_parts
        self._on_status = on_status
        self._on_incoming = on_incoming
        self._ready: collections.deque[_PartJob] = collections.deque()
        self._wake = asyncio.Event()
        self._inflight: dict[int, tuple[_PartJob, float]] = {}
        self._sequence = 0
        self._state: LinkState = "stopped"
        self._last_error = ""
        self._bind_failures = 0
        self._reconnects = 0
        self._submitted_parts = 0
        self._resent_after_drop = 0
        self._throttled = 0
        self._unknown_receipts = 0
        self._pause_until = 0.0
        self._throttle_backoff = config.throttle_backoff_min
        self._last_send = 0.0
        self._mo = MoReassembler(config.mo_timeout)
        self._undelivered: list[IncomingSms] = []
        self._next_mo_retry = 0.0
        self._writer: asyncio.StreamWriter | None = None
        self._pending_resp: dict[int, asyncio.Future[P.Pdu]] = {}
        self._last_rx = 0.0
        self._task: asyncio.Task[None] | None = None
        self._bound = asyncio.Event()
        self._was_bound = False
        # Failover (SmsChannel moves queued messages off a link that stays down):
        # a key whose part was ever written to the socket may have reached the SMSC
        # and is never withdrawn; a withdrawn key is never written again here.
        self._attempted: set[str] = set()
        self._withdrawn: set[str] = set()

    # -- public API ------------------------------------------------------------

    def health(self) -> LinkHealth:
        return LinkHealth(
            name=self.config.name,
            state=self._state,
            last_error=self._last_error,
            bind_failures=self._bind_failures,
            reconnects=self._reconnects,
            in_flight=len(self._inflight),
            queued_parts=len(self._ready),
            submitted_parts=self._submitted_parts,
            resent_after_drop=self._resent_after_drop,
            throttled=self._throttled,
            unknown_receipts=self._unknown_receipts,
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def available(self) -> bool:
        return self._state == "bound"

    async def wait_bound(self) -> None:
        await self._bound.wait()

    def plan_parts(self, text: str) -> tuple[Coding, list[str]]:
        """Coding and part texts, or MessageTooLongError / EmptyMessageError."""
        coding = choose_coding(text)
        parts = split_text(text, max_parts=self.config.max_parts, coding=coding)
        if self.config.use_message_payload and len(parts) > 1:
            return coding, [text]
        return coding, parts

    async def send(
        self, key: str, destination: str, text: str, source: str | None = None
    ) -> OutboundSms:
        """Queue a message (idempotent on ``key``). Raises on bad input before storing."""
        destination = validate_destination(destination)
        _, parts = self.plan_parts(text)
        message = OutboundSms(
            key=key,
            destination=destination,
            text=text,
            source=source if source is not None else self.config.source_addr,
            gateway=self.config.name,
            smsc_ids=(None,) * len(parts),
            part_states=(None,) * len(parts),
        )
        stored, created = await self._outbox.add(message)
        if created:
            self._enqueue(stored)
        return stored

    def withdraw(self, key: str) -> bool:
        """Take a queued message off this link if no part of it ever left; True if so."""
        if key in self._attempted:
            return False
        self._withdrawn.add(key)
        self._ready = collections.deque(job for job in self._ready if job.key != key)
        return True

    def fit(self, message: OutboundSms) -> OutboundSms:
        """A message moved here from another gateway, split for this link (no part sent)."""
        _, parts = self.plan_parts(message.text)
        return replace(
            message,
            gateway=self.config.name,
            source=message.source or self.config.source_addr,
            smsc_ids=(None,) * len(parts),
            part_states=(None,) * len(parts),
        )

    def adopt(self, message: OutboundSms) -> None:
        """Queue a message already stored for this link (see ``fit``)."""
        self._withdrawn.discard(message.key)
        self._enqueue(message)

    async def _restore_mo_parts(self) -> None:
        if self._mo_parts is None:
            return
        now, wall = time.monotonic(), time.time()
        for part in await self._mo_parts.pending(self.config.name):
            first_seen = now - max(0.0, wall - part.received_at)
            for message in self._mo.restore(part, first_seen):
                await self._hand_over(message)

    async def _hand_over(self, message: IncomingSms) -> bool:
        """Deliver one reassembled message; forget its saved parts once delivered."""
        if not await self._deliver_incoming(message):
            self._undelivered.append(message)
            return False
        await self._forget_parts(message)
        return True

    async def _forget_parts(self, message: IncomingSms) -> None:
        if self._mo_parts is None or message.reference is None:
            return
        await self._mo_parts.forget(self.config.name, message.source, message.destination,
                                    message.reference, message.parts_expected)

    async def start(self) -> None:
        """Load unfinished messages from the outbox and start the link task."""
        await self._restore_mo_parts()
        for message in await self._outbox.unfinished(self.config.name):
            try:
                self._enqueue(message)
            except SmsEncodingError as exc:
                # The configuration changed (max_parts, payload mode) since it was queued.
                await self._set_status(replace(message, status="failed", error=str(exc)))
        self._task = asyncio.create_task(self.run(), name=f"smpp-{self.config.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._state = "stopped"

    # -- jobs ------------------------------------------------------------------

    def _jobs_for(self, message: OutboundSms) -> list[_PartJob]:
        coding, parts = self.plan_parts(message.text)
        if len(parts) != message.parts:
            raise SmsEncodingError("stored part count does not match the text")
        data_coding = P.DATA_CODING_UCS2 if coding == "ucs2" else P.DATA_CODING_DEFAULT
        crc = zlib.crc32(message.key.encode())
        reference = crc & (0xFFFF if self.config.ref16 else 0xFF)
        jobs: list[_PartJob] = []
        for index, part in enumerate(parts):
            if message.smsc_ids[index] is not None:
                continue
            payload = encode_text(part, coding)
            esm_class = 0
            tlvs: tuple[tuple[int, bytes], ...] = ()
            if len(payload) > P.MAX_SHORT_MESSAGE or (
                self.config.use_message_payload and len(payload) > 140
            ):
                tlvs = ((P.TLV_MESSAGE_PAYLOAD, payload),)
                payload = b""
            elif len(parts) > 1:
                udh = build_concat_udh(reference, len(parts), index + 1, ref16=self.config.ref16)
                payload = udh + payload
                esm_class = P.ESM_CLASS_UDHI
            body = P.ShortMessage(
                source_addr=message.source,
                source_addr_ton=5 if message.source and not message.source.isdigit() else 1,
                source_addr_npi=0 if message.source and not message.source.isdigit() else 1,
                destination_addr=message.destination,
                dest_addr_ton=1,
                dest_addr_npi=1,
                short_message=payload,
                esm_class=esm_class,
                data_coding=data_coding,
                registered_delivery=1,
                tlvs=tlvs,
            )
            jobs.append(_PartJob(message.key, index, body))
        return jobs

    def _enqueue(self, message: OutboundSms) -> None:
        self._ready.extend(self._jobs_for(message))
        self._wake.set()

    # -- link loop -------------------------------------------------------------

    async def run(self) -> None:
        backoff = self.config.reconnect_min
        while True:
            previous = self._state
            self._was_bound = False
            self._state = "connecting"
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        self.config.host, self.config.port)
            except (OSError, TimeoutError) as exc:
                self._note_error(f"connect failed: {exc!r}", warn=previous != "down")
                self._state = "down"
            else:
                try:
                    await self._session(reader, writer)
                except BindRefusedError as exc:
                    first = previous != "bind_refused" or self._last_error != str(exc)
                    self._bind_failures += 1
                    self._state = "bind_refused"
                    self._note_error(str(exc), warn=first)
                except (_SessionEnded, P.PduError, OSError, TimeoutError) as exc:
                    self._state = "down"
                    self._note_error(f"link lost: {exc}", warn=previous != "down")
                    if self._was_bound:
                        backoff = self.config.reconnect_min
                except Exception as exc:
                    # A failing outbox store or callback must not end the link task for
                    # good: log the traceback, reset the session, reconnect after backoff.
                    self._state = "down"
                    self._last_error = f"session failed: {exc!r}"
                    log.exception("%s: session failed", self.config.name)
                finally:
                    await self._close(writer)
                    self._requeue_inflight()
            self._reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max)

    def _note_error(self, message: str, *, warn: bool) -> None:
        self._last_error = message
        (log.warning if warn else log.debug)("%s: %s", self.config.name, message)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writer = None
        self._bound.clear()
        for fut in self._pending_resp.values():
            if not fut.done():
                fut.cancel()
        self._pending_resp.clear()
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await writer.wait_closed()

    def _requeue_inflight(self) -> None:
        if not self._inflight:
            return
        jobs = [job for _, (job, _) in sorted(self._inflight.items(), key=lambda kv: kv[1][1])]
        self._inflight.clear()
        self._resent_after_drop += len(jobs)
        self._ready.extendleft(reversed(jobs))

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        return self._sequence

    def _write(self, pdu: P.Pdu) -> None:
        if self._writer is None:
            raise _SessionEnded("not connected")
        self._writer.write(P.encode_pdu(pdu))

    async def _request(self, command_id: int, body: P.Body = None) -> P.Pdu:
        seq = self._next_sequence()
        fut: asyncio.Future[P.Pdu] = asyncio.get_running_loop().create_future()
        self._pending_resp[seq] = fut
        try:
            self._write(P.Pdu(command_id, seq, body=body))
            async with asyncio.timeout(self.config.response_timeout):
                return await fut
        finally:
            self._pending_resp.pop(seq, None)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._last_rx = time.monotonic()
        self._state = "binding"
        tasks = [asyncio.create_task(self._read_loop(reader), name="smpp-read")]
        try:
            resp = await self._request(
                P.BIND_TRANSCEIVER,
                P.Bind(self.config.system_id, self.config.password, self.config.system_type),
            )
            if resp.status != P.ESME_ROK:
                raise BindRefusedError(resp.status)
            if resp.command_id != P.BIND_TRANSCEIVER | P.RESP:
                raise _SessionEnded(f"unexpected {resp.name} to bind")
            self._state = "bound"
            self._was_bound = True
            self._last_error = ""
            self._bound.set()
            log.info("%s: bound to %s:%d", self.config.name, self.config.host, self.config.port)
            tasks.append(asyncio.create_task(self._send_loop(), name="smpp-send"))
            tasks.append(asyncio.create_task(self._watchdog(), name="smpp-watchdog"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
            raise _SessionEnded("session task ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._read_frames(reader)
        except Exception as exc:
            for fut in self._pending_resp.values():
                if not fut.done():
                    fut.set_exception(_SessionEnded(f"reader failed: {exc}"))
            raise

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        framer = P.PduFramer()
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise _SessionEnded("connection closed by the SMSC")
            self._last_rx = time.monotonic()
            for frame in framer.feed(data):
                await self._dispatch(P.decode_pdu(frame))

    async def _dispatch(self, pdu: P.Pdu) -> None:
        if pdu.is_response:
            if pdu.command_id == P.SUBMIT_SM | P.RESP and pdu.sequence in self._inflight:
                await self._on_submit_resp(pdu)
                return
            fut = self._pending_resp.get(pdu.sequence)
            if fut is not None and not fut.done():
                fut.set_result(pdu)
            elif pdu.command_id == P.GENERIC_NACK and pdu.sequence in self._inflight:
                await self._on_submit_resp(pdu)
            return
        if pdu.command_id == P.ENQUIRE_LINK:
            self._write(P.Pdu(P.ENQUIRE_LINK | P.RESP, pdu.sequence))
        elif pdu.command_id == P.DELIVER_SM and isinstance(pdu.body, P.ShortMessage):
            status = await self._on_deliver(pdu.body)
            self._write(P.Pdu(P.DELIVER_SM | P.RESP, pdu.sequence, status, P.MessageIdResp("")))
        elif pdu.command_id == P.UNBIND:
            self._write(P.Pdu(P.UNBIND | P.RESP, pdu.sequence))
            raise _SessionEnded("unbind from the SMSC")
        else:
            self._write(P.Pdu(P.GENERIC_NACK, pdu.sequence, P.ESME_RINVCMDID))

    # -- sending ---------------------------------------------------------------

    async def _send_loop(self) -> None:
        min_gap = 1.0 / self.config.tps * 1.001 if self.config.tps else 0.0
        while True:
            now = time.monotonic()
            if now < self._pause_until:
                await asyncio.sleep(self._pause_until - now)
                continue
            if not self._ready or len(self._inflight) >= self.config.window:
                self._wake.clear()
                await self._wake.wait()
                continue
            if min_gap and now - self._last_send < min_gap:
                await asyncio.sleep(self._last_send + min_gap - now)
                continue
            job = self._ready.popleft()
            message = await self._outbox.get(job.key)
            if (
                message is None
                or message.status != "queued"
                or message.gateway != self.config.name
                or job.key in self._withdrawn
                or message.smsc_ids[job.index] is not None
            ):
                continue
            self._attempted.add(job.key)
            seq = self._next_sequence()
            self._inflight[seq] = (job, time.monotonic())
            self._last_send = time.monotonic()
            self._write(P.Pdu(P.SUBMIT_SM, seq, body=job.body))

    async def _on_submit_resp(self, pdu: P.Pdu) -> None:
        job, _ = self._inflight.pop(pdu.sequence)
        self._wake.set()
        if pdu.status in (P.ESME_RTHROTTLED, P.ESME_RMSGQFUL):
            self._throttled += 1
            self._ready.appendleft(job)
            now = time.monotonic()
            if now >= self._pause_until:  # a new throttling episode, not its echo
                self._pause_until = now + self._throttle_backoff
                self._throttle_backoff = min(
                    self._throttle_backoff * 2, self.config.throttle_backoff_max
                )
            return
        self._throttle_backoff = self.config.throttle_backoff_min
        message = await self._outbox.get(job.key)
        if message is None:
            return
        if pdu.status != P.ESME_ROK or not isinstance(pdu.body, P.MessageIdResp):
            if message.status not in FINAL_STATUSES:
                await self._set_status(
                    replace(message, status="failed", error=f"submit_sm status 0x{pdu.status:08x}")
                )
            return
        self._submitted_parts += 1
        message = message.with_part_submitted(job.index, pdu.body.message_id)
        if message.status == "queued" and all(i is not None for i in message.smsc_ids):
            await self._set_status(replace(message, status="submitted"))
        else:
            await self._outbox.update(message)

    async def _set_status(self, message: OutboundSms) -> None:
        await self._outbox.update(message)
        if message.status != "queued":
            self._attempted.discard(message.key)
        if self._on_status is None:
            return
        try:
            await self._on_status(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The new status is stored; a failing listener must not reset the link
            # (that would resend the window). It can re-read the outbox.
            log.exception("%s: status callback failed for %s", self.config.name, message.key)

    # -- receiving -------------------------------------------------------------

    async def _on_deliver(self, sm: P.ShortMessage) -> int:
        # Any message type other than "normal" (receipt 0x04, intermediate notification
        # 0x20, SME acknowledgements) is a report about a message we sent, never MO text.
        if sm.esm_class & P.ESM_CLASS_TYPE_MASK:
            await self._on_receipt(sm)
            return P.ESME_ROK
        # Handler failure: a single-part message is refused with ESME_RX_T_APPN so the
        # SMSC redelivers it; a reassembled one exists only here, so it is kept and
        # retried by the watchdog (the SMSC already has our response to its parts).
        status = P.ESME_ROK
        part = multipart_info(sm)
        if part is not None and self._mo_parts is not None and not self._mo.seen(sm):
            reference, total, sequence, payload = part
            try:
                await self._mo_parts.save(self.config.name, StoredPart(
                    sm.source_addr, sm.destination_addr, reference, total, sequence,
                    sm.data_coding, payload, time.time()))
            except asyncio.CancelledError:
                raise
            except Exception:
                # Not saved: refuse it, the SMSC redelivers the part later.
                log.exception("%s: saving an MO part failed", self.config.name)
                return P.ESME_RX_T_APPN
        for message in self._mo.add(sm, time.monotonic()):
            if message.parts_expected == 1:
                if not await self._deliver_incoming(message):
                    status = P.ESME_RX_T_APPN
            else:
                await self._hand_over(message)
        return status

    async def _deliver_incoming(self, message: IncomingSms) -> bool:
        if self._on_incoming is None:
            return True
        try:
            await self._on_incoming(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: incoming SMS handler failed", self.config.name)
            return False
        return True

    async def _on_receipt(self, sm: P.ShortMessage) -> None:
        try:
            receipt = parse_receipt(sm)
        except ReceiptError as exc:
            self._unknown_receipts += 1
            log.info("%s: unusable delivery receipt: %s", self.config.name, exc)
            return
        found = None
        for form in id_forms(receipt.message_id):
            found = await self._outbox.find_by_smsc_id(form)
            if found is not None:
                break
        if found is None:
            self._unknown_receipts += 1
            log.info("%s: receipt for unknown message id %r", self.config.name, receipt.message_id)
            return
        message, index = found
        if (
            message.part_states[index] in FINAL_PART_STATES
            and receipt.state not in FINAL_PART_STATES
        ):
            return  # a late intermediate notification never undoes a final receipt
        message = message.with_part_state(index, receipt.state)
        combined = combine_states(list(message.part_states))
        if combined is not None and message.status not in FINAL_STATUSES:
            error = receipt.error if combined != "delivered" else ""
            await self._set_status(replace(message, status=combined, error=error))
        else:
            await self._outbox.update(message)

    async def _watchdog(self) -> None:
        tick = min(0.5, self.config.enquire_link_interval / 2, self.config.response_timeout / 2)
        ping: asyncio.Task[P.Pdu] | None = None
        try:
            while True:
                await asyncio.sleep(tick)
                now = time.monotonic()
                retry: list[IncomingSms] = []
                if self._undelivered and now >= self._next_mo_retry:
                    retry, self._undelivered = self._undelivered, []
                    self._next_mo_retry = now + MO_RETRY_INTERVAL
                for incoming in retry + self._mo.expire(now):
                    await self._hand_over(incoming)
                oldest = min((sent for _, sent in self._inflight.values()), default=now)
                if now - oldest > self.config.response_timeout:
                    raise _SessionEnded("submit_sm unanswered")
                if ping is not None and ping.done():
                    exc = ping.exception() if not ping.cancelled() else None
                    if isinstance(exc, TimeoutError):
                        raise _SessionEnded("enquire_link unanswered")
                    ping = None
                if ping is None and now - self._last_rx >= self.config.enquire_link_interval:
                    ping = asyncio.create_task(self._request(P.ENQUIRE_LINK))
        finally:
            if ping is not None:
                ping.cancel()
