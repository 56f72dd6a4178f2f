"""A GSM modem as an SMS gateway: the durable outbox in front of ``GsmModem``.

Theory of operation
-------------------
``send()`` stores the message in the outbox (idempotent on its key, status
"queued", gateway = the modem's name) and hands it to one sender task, which
submits messages to the driver one at a time, oldest first. When the driver
says every part was accepted (``SendResult``) the message becomes "submitted"
and each part's TP-MR is kept as its SMSC id (``<modem>:<mr>``), so a status
report that arrives after a restart (the driver has forgotten the message) is
still matched, to the newest message with that reference. Status reports move
the message to delivered / failed once every part has a final report
(``DeliveryReport.message_state``). At start the messages still "queued" for
this modem are loaded again; a message the modem may already have taken when
the process died is sent again (a modem has no idempotency key: at least once).

Incoming messages, incoming calls and health changes go to the callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace

from sms_gateway.encoding import choose_coding, split_text
from sms_gateway.esme import validate_destination
from sms_gateway.mo import IncomingSms
from sms_gateway.modem.driver import GsmModem, SendFailed
from sms_gateway.modem.errors import ModemError
from sms_gateway.modem.events import (
    DeliveryReport,
    HealthChanged,
    IncomingCall,
    ModemHealth,
    SmsReceived,
)
from sms_gateway.outbox import OutboundSms, OutboxStore
from sms_gateway.receipts import PartState

log = logging.getLogger(__name__)

StatusCallback = Callable[[OutboundSms], Awaitable[None]]
IncomingCallback = Callable[[IncomingSms], Awaitable[None]]
CallCallback = Callable[[IncomingCall], Awaitable[None]]


async def _ignore(_: object) -> None:
    return None


class ModemGateway:
    """``SmsGateway`` (sms_gateway.routing) over one ``GsmModem`` and an ``OutboxStore``."""

    def __init__(
        self,
        modem: GsmModem,
        outbox: OutboxStore,
        *,
        on_status: StatusCallback = _ignore,
        on_incoming: IncomingCallback = _ignore,
        on_call: CallCallback = _ignore,
    ) -> None:
        self.modem = modem
        self._outbox = outbox
        self._on_status = on_status
        self._on_incoming = on_incoming
        self._on_call = on_call
        self._queue: deque[OutboundSms] = deque()
        self._queued = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending = False  # the head of the queue is in the driver's hands
        # Sender and status reports read-modify-write the same rows: one at a time.
        self._rows = asyncio.Lock()
        self._in_flight: str | None = None  # sent, its SMSC ids not stored yet
        self._early: dict[str, list[DeliveryReport]] = {}  # reports for it meanwhile

    @property
    def name(self) -> str:
        return self.modem.config.name

    @property
    def available(self) -> bool:
        return self.modem.health().up

    def health(self) -> ModemHealth:
        return self.modem.health()

    def plan_parts(self, text: str) -> list[str]:
        return split_text(text, max_parts=self.modem.config.max_parts, coding=choose_coding(text))

    async def send(
        self, key: str, destination: str, text: str, source: str | None = None
    ) -> OutboundSms:
        """Queue a message (idempotent on ``key``). Raises on bad input before storing."""
        digits = validate_destination(destination)
        # The "+" stays: the TPDU's type of number (international) comes from it.
        destination = f"+{digits}" if destination.startswith("+") else digits
        parts = self.plan_parts(text)
        message = OutboundSms(
            key=key,
            destination=destination,
            text=text,
            source=source or "",
            gateway=self.name,
            smsc_ids=(None,) * len(parts),
            part_states=(None,) * len(parts),
        )
        stored, created = await self._outbox.add(message)
        if created:
            self._enqueue(stored)
        return stored

    def withdraw(self, key: str) -> bool:
        """Take a queued message off this modem if the driver does not hold it yet."""
        for index, message in enumerate(self._queue):
            if message.key == key:
                if index == 0 and self._sending:
                    return False
                del self._queue[index]
                return True
        return False

    def fit(self, message: OutboundSms) -> OutboundSms:
        """A message moved here from another gateway, split for this modem."""
        parts = self.plan_parts(message.text)
        return replace(message, gateway=self.name, smsc_ids=(None,) * len(parts),
                       part_states=(None,) * len(parts))

    def adopt(self, message: OutboundSms) -> None:
        self._enqueue(message)

    async def start(self) -> None:
        for message in await self._outbox.unfinished(self.name):
            self._enqueue(message)
        await self.modem.start()
        self._spawn(self._sender(), "sender")
        self._spawn(self._consume(), "events")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.modem.close()

    # -- internals -------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run(), name=f"modem-gateway-{self.name}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _enqueue(self, message: OutboundSms) -> None:
        self._queue.append(message)
        self._queued.set()

    async def _sender(self) -> None:
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
            message = self._queue[0]
            self._sending = True
            self._in_flight = message.key
            try:
                result = await self.modem.send(
                    message.destination, message.text, message_id=message.key
                )
            except SendFailed as exc:
                done = replace(message, status="failed", error=str(exc.cause)[:500])
            except (ModemError, ValueError) as exc:
                # Bad input found late (the config changed since it was queued).
                done = replace(message, status="failed", error=str(exc)[:500])
            else:
                refs = [f"{self.name}:{mr}" for mr in result.references]
                ids = tuple(refs[i] if i < len(refs) else None for i in range(message.parts))
                done = replace(message, status="submitted", smsc_ids=ids)
            finally:
                self._sending = False
            self._queue.popleft()
            async with self._rows:
                self._in_flight = None
                try:
                    await self._store(done)
                    for report in self._early.pop(message.key, []):
                        await self._apply_report(report)
                except Exception:  # the store failing must not stop every later send
                    log.exception("modem %s: recording %s as %s failed", self.name,
                                  message.key, done.status)

    async def _store(self, message: OutboundSms) -> None:
        await self._outbox.update(message)
        try:
            await self._on_status(message)
        except Exception:
            log.exception("status callback failed for %s", message.key)

    async def _consume(self) -> None:
        async for event in self.modem.events():
            try:
                await self._dispatch(event)
            except Exception:
                log.exception("modem %s: handling %s failed", self.name, type(event).__name__)

    async def _dispatch(self, event: object) -> None:
        match event:
            case SmsReceived():
                missing = len(event.missing)
                await self._on_incoming(
                    IncomingSms(
                        source=event.sender,
                        destination="",
                        text=event.text,
                        parts_expected=event.parts + missing,
                        parts_received=event.parts,
                        complete=event.complete,
                    )
                )
            case DeliveryReport():
                await self._on_report(event)
            case IncomingCall():
                await self._on_call(event)
            case HealthChanged():
                log.info("modem %s: up=%s sim=%s registration=%s", self.name,
                         event.health.up, event.health.sim, event.health.registration)

    async def _on_report(self, report: DeliveryReport) -> None:
        """Theory: a fast network reports a part before the driver's send() returns, so
        the last part's report and "every part accepted" arrive together. Applied to a row
        without its SMSC ids, the report marked the wrong part, and the sender's row
        ("submitted", written from its copy) then overwrote "delivered" (a reply stuck
        "submitted" forever). Reports for the message in flight wait until its SMSC ids
        are stored; every row update happens under one lock."""
        async with self._rows:
            if report.message_id is not None and report.message_id == self._in_flight:
                self._early.setdefault(report.message_id, []).append(report)
                return
            await self._apply_report(report)

    async def _apply_report(self, report: DeliveryReport) -> None:
        found: tuple[OutboundSms, int] | None = None
        if report.message_id is not None:
            message = await self._outbox.get(report.message_id)
            if message is not None:
                smsc_id = f"{self.name}:{report.reference}"
                index = message.smsc_ids.index(smsc_id) if smsc_id in message.smsc_ids else 0
                found = (message, index)
        if found is None:
            found = await self._outbox.find_by_smsc_id(f"{self.name}:{report.reference}")
        if found is None:
            log.info("modem %s: status report for unknown reference %d", self.name,
                     report.reference)
            return
        message, index = found
        state: PartState = (
            "delivered" if report.state == "delivered"
            else "failed" if report.state == "failed" else "enroute"
        )
        updated = message.with_part_state(index, state) if index < message.parts else message
        if report.message_state == "delivered":
            updated = replace(updated, status="delivered")
        elif report.message_state == "failed":
            updated = replace(updated, status="failed", error=f"TP-ST {report.tp_status}")
        if updated != message:
            await self._store(updated)
