"""cti's implementation of the IVR ports (ivr/ports.py) over :class:`Services`.

- Customers: the caller number (E.164 in ``settings.default_region``) through the
  identities; a keyed reference is the customer's account number
  (``Customer.external_id``) or one of its order numbers (``custom["orders"]``).
- Orders: ``Customer.custom["orders"]``, a list of
  ``{"id": "<digits>", "state": "received|processing|shipped|delivered|cancelled",
  "placed_at": "<ISO 8601>"}``; the latest is the one with the greatest
  ``placed_at`` (the last in the list when dates are missing or equal).
- History: each IVR step is a history event ``ivr_choice`` on the caller's
  customer and voice conversation.
- Queue statistics: the live PbxTracker state of every AMI link plus the recent
  average handle time from the history store (see :class:`LiveQueueStatistics`).
- Deflection: :class:`TextDeflection` (SMS with the signed chat link, linked text
  conversation ranked by the original queue entry time, ``call_deflected``).
- Callbacks: the callback service of ``cti.callbacks`` when it is installed.

The IVR's ``call_id`` is the caller channel's Uniqueid; the PBX tracker names a
call ``<pbx>:<Linkedid>``, and an inbound caller's channel is the first of its
call, so its Linkedid is its Uniqueid: the voice conversation of an IVR call is
the one whose ``external_ref`` is ``<pbx>:<call_id>`` for one of the links.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import String, cast, select

from cti.callbacks import CALLBACKS
from cti.errors import DomainError
from cti.history import HistoryEntry
from cti.identities import IdentityKind
from cti.models import Conversation, HistoryEvent
from cti.models import Customer as CustomerRow
from cti.services import Services
from cti.webchat import chat_link
from ivr.ports import (
    CallbackBooking,
    CallbackRequest,
    Callbacks,
    Customer,
    DeflectionRequest,
    DeflectionResult,
    IvrChoice,
    OrderState,
    OrderStatus,
    PortError,
    QueueStats,
)
from pbx.link import AmiLink

log = logging.getLogger(__name__)

MAX_REFERENCE = 32
MAX_ORDERS = 200
REFERENCE_CANDIDATES = 20
AHT_CALLS = 20  # recent answered calls averaged for the handle time
AHT_SCAN = 500  # call_ended events scanned (newest first) to find them
MAX_CHOICES = 200
UNSENT = frozenset({"no_gateway", "failed", "refused"})
LOGGED_OUT_STATES = frozenset({"UNAVAILABLE", "INVALID", "UNKNOWN"})

LinksOf = Callable[[], Iterable[AmiLink]]

SMS_TEXT = {
    "ru": "Продолжим в чате, ваше место в очереди сохранено: {link}",
    "en": "Let's continue in the chat, your place in line is kept: {link}",
}


def _language(value: str) -> str:
    return "ru" if value.lower().startswith("ru") else "en"


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _customer(row: CustomerRow, phone: str | None = None) -> Customer:
    language = row.custom.get("language") if isinstance(row.custom, dict) else None
    return Customer(
        customer_id=str(row.id),
        display_name=row.name,
        phone=phone,
        language=language if language in ("en", "ru") else None,
    )


def _orders(row: CustomerRow) -> list[dict[str, Any]]:
    orders = row.custom.get("orders") if isinstance(row.custom, dict) else None
    if not isinstance(orders, list):
        return []
    return [o for o in orders[:MAX_ORDERS] if isinstance(o, dict) and "id" in o]


def latest_order(row: CustomerRow) -> OrderStatus | None:
    """The customer card's latest order (see the module doc for the field shape)."""
    best: tuple[str, int, dict[str, Any]] | None = None
    for index, order in enumerate(_orders(row)):
        key = (str(order.get("placed_at") or ""), index, order)
        if best is None or key[:2] >= best[:2]:
            best = key
    if best is None:
        return None
    order = best[2]
    try:
        state = OrderState(str(order.get("state", "received")))
    except ValueError:
        log.warning("customer %s: order %r has an unknown state", row.id, order.get("id"))
        return None
    return OrderStatus(str(order["id"])[:MAX_REFERENCE], state)


def _customer_id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


async def voice_conversation(
    services: Services, links: LinksOf, call_id: str
) -> Conversation | None:
    """The voice conversation of an IVR call (see the module doc)."""
    for link in links():
        conv = await services.conversations.by_ref(f"{link.name}:{call_id}")
        if conv is not None:
            return conv
    return None


class CustomerDirectoryPort:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def find_by_phone(self, number: str) -> Customer | None:
        customers = self._services.customers
        try:
            ident = customers.normalise(IdentityKind.PHONE, number[:64])
            row = await customers.lookup(IdentityKind.PHONE, number[:64])
        except DomainError:
            return None
        if row is None or row.provisional:
            return None
        return _customer(row, ident.value)

    async def find_by_reference(self, digits: str) -> Customer | None:
        if not digits.isdigit() or len(digits) > MAX_REFERENCE:
            return None
        async with self._services.sessions() as session:
            row = await session.scalar(
                select(CustomerRow)
                .where(CustomerRow.external_id == digits, CustomerRow.merged_into_id.is_(None))
                .limit(1)
            )
            if row is not None:
                return _customer(row)
            # Order numbers live in the JSON card: narrow with a text match, then check.
            rows = await session.scalars(
                select(CustomerRow)
                .where(
                    cast(CustomerRow.custom, String).contains(digits),
                    CustomerRow.merged_into_id.is_(None),
                )
                .limit(REFERENCE_CANDIDATES)
            )
            for candidate in rows:
                if any(str(o.get("id")) == digits for o in _orders(candidate)):
                    return _customer(candidate)
        return None


class OrderServicePort:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def latest_order(self, customer_id: str) -> OrderStatus | None:
        cid = _customer_id(customer_id)
        if cid is None:
            return None
        try:
            row = await self._services.customers.get(cid)
        except DomainError:
            return None
        return latest_order(row)


def _like_prefix(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text) + "%"


class IvrHistoryPort:
    """IVR steps as history events ``ivr_choice`` (dedup key per call, step and time)."""

    def __init__(self, services: Services, links: LinksOf) -> None:
        self._services = services
        self._links = links

    @staticmethod
    def key_prefix(call_id: str) -> str:
        return f"ivr:{call_id[:64]}:"

    async def record_choice(self, choice: IvrChoice) -> None:
        services = self._services
        conv = await voice_conversation(services, self._links, choice.call_id)
        customer_id = _customer_id(choice.customer_id)
        if customer_id is None and conv is not None:
            customer_id = conv.customer_id
        if customer_id is None and choice.caller_number:
            try:
                customer, _ = await services.customers.identify(
                    IdentityKind.PHONE, choice.caller_number[:64]
                )
                customer_id = customer.id
            except DomainError:
                pass
        if customer_id is None:
            log.info("IVR %s: step %s of an unidentifiable caller not recorded",
                     choice.call_id, choice.step)
            return
        await services.history.add(
            HistoryEntry(
                customer_id=customer_id,
                conversation_id=conv.id if conv is not None else None,
                kind="ivr_choice",
                channel="voice",
                occurred_at=_when(choice.at),
                payload={
                    "call_id": choice.call_id,
                    "step": choice.step[:64],
                    "value": choice.value[:256],
                    "caller_number": choice.caller_number[:64],
                    "at": choice.at,
                },
                dedup_key=f"{self.key_prefix(choice.call_id)}{choice.step[:64]}:{choice.at:.6f}",
            )
        )

    async def choices_for_call(self, call_id: str) -> Sequence[IvrChoice]:
        await self._services.history.flush()
        async with self._services.sessions() as session:
            rows = await session.scalars(
                select(HistoryEvent)
                .where(
                    HistoryEvent.kind == "ivr_choice",
                    HistoryEvent.dedup_key.like(_like_prefix(self.key_prefix(call_id)),
                                                escape="\\"),
                )
                .order_by(HistoryEvent.occurred_at, HistoryEvent.id)
                .limit(MAX_CHOICES)
            )
            events = list(rows)
        return [
            IvrChoice(
                call_id=str(e.payload.get("call_id", call_id)),
                step=str(e.payload.get("step", "")),
                value=str(e.payload.get("value", "")),
                at=float(e.payload.get("at", e.occurred_at.timestamp())),
                customer_id=str(e.customer_id),
                caller_number=str(e.payload.get("caller_number", "")),
            )
            for e in events
        ]


class LiveQueueStatistics:
    """Theory of operation: the queue as every AMI link's PbxTracker sees it now,
    summed over the links that know the queue. ``waiting`` is the callers in it;
    ``position`` is the caller's (matched by channel name) or None; a member is
    *logged in* when its device state is known and reachable (not UNAVAILABLE,
    INVALID or UNKNOWN) and *available* when also not paused, not on a call and
    NOT_INUSE. ``recent_aht`` is the mean of talk + hold of the last
    :data:`AHT_CALLS` answered calls of that queue (``call_ended`` history events,
    newest first, scanning at most :data:`AHT_SCAN`), None without data."""

    def __init__(self, services: Services, links: LinksOf) -> None:
        self._services = services
        self._links = links

    async def queue_stats(self, queue: str, channel: str | None = None) -> QueueStats:
        waiting = available = logged_in = 0
        position: int | None = None
        for link in self._links():
            snap = link.queue(queue)
            if snap is None:
                continue
            waiting += len(snap.waiting)
            for caller in snap.waiting:
                if channel and caller.channel == channel:
                    position = caller.position
            for member in snap.members:
                if member.device_state in LOGGED_OUT_STATES:
                    continue
                logged_in += 1
                if not member.paused and not member.in_call and member.device_state == "NOT_INUSE":
                    available += 1
        return QueueStats(
            queue=queue,
            waiting=waiting,
            agents_available=available,
            agents_logged_in=logged_in,
            recent_aht=await self.recent_aht(queue),
            position=position,
        )

    async def recent_aht(self, queue: str) -> float | None:
        async with self._services.sessions() as session:
            rows = await session.scalars(
                select(HistoryEvent.payload)
                .where(HistoryEvent.kind == "call_ended", HistoryEvent.channel == "voice")
                .order_by(HistoryEvent.occurred_at.desc(), HistoryEvent.id.desc())
                .limit(AHT_SCAN)
            )
            handled: list[float] = []
            for payload in rows:
                if not isinstance(payload, dict) or payload.get("queue") != queue:
                    continue
                talk = payload.get("talk")
                if not isinstance(talk, (int, float)) or talk <= 0:
                    continue
                hold = payload.get("hold")
                handled.append(float(talk) + (float(hold) if isinstance(hold, (int, float)) else 0))
                if len(handled) >= AHT_CALLS:
                    break
        return statistics.fmean(handled) if handled else None


class TextDeflection:
    """Move a waiting caller to web chat / SMS (see docs/ivr.md, "cti serve wiring")."""

    def __init__(self, services: Services, links: LinksOf) -> None:
        self._services = services
        self._links = links

    async def _customer_id(self, request: DeflectionRequest, voice: Conversation | None) -> int:
        if voice is not None:
            return voice.customer_id
        cid = _customer_id(request.customer_id)
        if cid is not None:
            return cid
        customer, _ = await self._services.customers.identify(
            IdentityKind.PHONE, request.caller_number[:64]
        )
        return customer.id

    async def _queued_at(self, call_ref: str | None, request: DeflectionRequest) -> datetime:
        """The original queue entry: the call's first ``call_queued`` event (to the
        millisecond) when recorded, else the dialplan's CTI_QUEUE_ENTERED (seconds)."""
        if call_ref is not None:
            await self._services.history.flush()
            async with self._services.sessions() as session:
                first = await session.scalar(
                    select(HistoryEvent.occurred_at).where(
                        HistoryEvent.dedup_key == f"{call_ref}:queued:{request.queue}"[:200]
                    )
                )
            if first is not None:
                return first
        return _when(request.queue_entry_time)

    async def deflect_to_text(self, request: DeflectionRequest) -> DeflectionResult:
        services = self._services
        try:
            contact = services.customers.normalise(
                IdentityKind.PHONE, request.caller_number[:64]
            ).value
            voice = await voice_conversation(services, self._links, request.call_id)
            call_ref = voice.external_ref if voice is not None else None
            customer_id = await self._customer_id(request, voice)
            queued_at = await self._queued_at(call_ref, request)
            conv = await services.inbox.deflect_to_chat(
                call_ref or request.call_id,
                customer_id,
                contact,
                queue=request.queue or None,
                queued_at=queued_at,
                voice=voice,
                choices=[
                    {"step": c.step, "value": c.value, "at": c.at} for c in request.choices
                ][:MAX_CHOICES],
            )
            link = self._chat_link(conv.id)
            text = SMS_TEXT[_language(request.language)].format(link=link)
            try:
                status = await services.conversations.outbound.send("sms", contact, text, conv.id)
                if status in UNSENT:
                    raise PortError(f"the SMS with the chat link was not sent ({status})")
            except (DomainError, PortError) as exc:
                # The caller goes back into the queue: nobody is waiting in this chat.
                await services.inbox.cancel_deflection(conv.id, str(exc))
                raise
            if call_ref is not None:
                await services.calls.mark_deflected(call_ref, conv.id, request.queue)
            await services.inbox.serve_waiting(request.queue or None)
        except DomainError as exc:
            raise PortError(exc.message) from exc
        return DeflectionResult(str(conv.id), sms_sent=True)

    def _chat_link(self, conversation_id: int) -> str:
        return chat_link(self._services, conversation_id)


class NoCallbacks:
    """Callbacks when the callback service is not installed: the caller is re-queued."""

    async def book_callback(self, request: CallbackRequest) -> CallbackBooking:
        raise PortError("callbacks are not available on this server")


def callbacks_port(app: web.Application) -> Callbacks:
    """The callback service (``cti.callbacks.CALLBACKS``) when installed."""
    service = app.get(CALLBACKS)
    return service if service is not None else NoCallbacks()
