"""Callbacks: a caller's virtual place in line, then agent first, customer second.

The IVR (``queue-exit``, digit 2) books through :meth:`CallbackService.book_callback`
(the ``ivr.ports.Callbacks`` port); supervisors list and cancel over REST
(``GET /api/v1/callbacks``, ``DELETE /api/v1/callbacks/{id}``).

Theory of operation (one booking, persisted in ``callback_bookings``)::

    waiting --turn comes--> calling --agent and customer bridged--> connected --end--> done
       ^                       |  agent did not answer: waiting at once, that agent
       |                       |  skipped for this booking a while (not an attempt)
       +---- retry_delay ------+  customer no answer / busy: attempts+1
                               +  after the last attempt: failed
    waiting / calling --DELETE--> cancelled

The turn of a booking comes when an agent of its queue is free in the live
``PbxTracker`` state (device NOT_INUSE, not paused, not in a call, not being
dialled by us) and no voice caller who entered the queue EARLIER than the
booking's ``queue_entry_time`` still waits. Bookings are served in
``queue_entry_time`` order. One scheduler task ticks every ``tick`` seconds
with O(1) checks; it makes a full pass (queue snapshots, one query) only when
a booking is due AND something may let it through since the last pass: a
queue member became free, a queued caller left, a booking became due, an
attempt ended, a skipped agent may be asked again. PBX changes that cannot
matter (device-state churn of busy agents, new calls) only cost the listener
an ``isinstance``. The earliest due time is read from the database after each
pass and every ``follow_check`` seconds (bookings made by the IVR on another
node). Each claimed booking gets one attempt task. The claim is a conditional
UPDATE ``waiting -> calling``, so a booking is never dialled twice at once,
even by two servers.

The attempt opens the callback's voice conversation (``external_ref`` = the
call id the Originate will have, linked to the original call's conversation),
pops the customer on the agent's desk, then sends an async Originate with
``ChannelId cti-<correlation>`` to the agent's endpoint; once the agent
answers, the PBX dials the customer from the link's originate context (the
lab's ``from-agents``: ``PJSIP/<number>@carrier``). ``CallAnswered`` for that
call id (the two legs bridged) means connected; ``CallEnded`` before it means
the customer did not answer (or was busy).

Restart: waiting bookings are simply read again. A booking found in
``calling`` with no attempt task of this process is re-checked once its PBX
link is up (after its resync): if the call still exists it is followed, else
the booking goes back to ``waiting`` (``last_result=interrupted``, not
counted) and is dialled again after ``retry_delay`` (the customer's phone may
just have rung).

Cluster: the scheduling follows the PBXes. One duty ``callbacks:<pbx>`` per
configured PBX (``cti.cluster.duties``), eligible only on the node holding that
PBX's AMI lease (``pbx:<pbx>``): its scheduler dials only through that link and
serves the bookings of that PBX. A booking's PBX is the one its call came in on
(the original voice conversation ``<pbx>:<call id>``, found at booking time on
any node, stored in ``pbx``). A booking whose PBX is unknown (no conversation:
the call never reached a queue the server saw, or a PBX since removed from the
configuration) is offered to every scheduler whose PBX has a free agent in its
queue; the claim decides who dials it, and it is then bound to that PBX. The
claim is one conditional UPDATE ``waiting -> calling`` that also requires the
row to be the version the scheduler read (``updated_at``), so a booking is never
dialled twice, even by two nodes reading it at once. When a holder dies, the
next holder of that PBX finds the bookings in the database: ``waiting`` ones are
served, one in flight is ``calling`` and goes through the re-check above
(followed if the call is still up after the AMI resync, else dialled again
after ``retry_delay``). Single-node mode (no Redis) runs one scheduler,
``callbacks``, over every link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from cti.api import principal
from cti.auth import Role
from cti.cluster.duties import duties_of, local_duties
from cti.cluster.lease import Lease
from cti.cluster.node import LEASES
from cti.errors import Conflict, InvalidInput, NotFound
from cti.history import HistoryEntry
from cti.identities import IdentityKind
from cti.keys import SERVICES
from cti.links.pbx import PBX_LINKS
from cti.logs import correlate
from cti.models import CallbackBookingRow, Customer, utcnow
from cti.services import Services
from cti.validation import path_id, query_int
from ivr.ports import CallbackBooking, CallbackRequest, PortError
from pbx.actions import (
    AmiActionError,
    BadActionArgument,
    OriginateFailed,
    PbxUnavailable,
    UnknownOutcome,
    new_correlation_id,
)
from pbx.changes import (
    CallAbandoned,
    CallAnswered,
    CallEnded,
    Change,
    PbxLinkChanged,
    QueueMemberChanged,
)
from pbx.link import AmiLink
from pbx.state import MemberSnapshot, QueueSnapshot

log = logging.getLogger(__name__)

DUTY = "callbacks"
STATUSES = ("waiting", "calling", "connected", "done", "failed", "cancelled")
OPEN = ("waiting", "calling", "connected")
MAX_NUMBER = 32
MAX_QUEUE = 64
MAX_CALL_ID = 160
MAX_PASS = 200
STOP_TIMEOUT = 10.0
BUSY_CAUSES = frozenset({17})
_QUEUE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CALLER_NAME_DROP = re.compile(r"[\"<>\\\x00-\x1f\x7f]")

LinksProvider = Callable[[], Mapping[str, AmiLink]]


def agent_is_free(member: MemberSnapshot) -> bool:
    """Logged in (device idle, hence registered), not paused, not in a call."""
    return member.device_state == "NOT_INUSE" and not member.paused and not member.in_call


def earlier_caller_waits(queue: QueueSnapshot, entry_time: float) -> bool:
    """A voice caller who entered ``queue`` before ``entry_time`` still waits."""
    return any(w.joined_at < entry_time for w in queue.waiting)


def callback_caller_id(name: str, number: str) -> str:
    """``"Callback <name>" <number>``: what the agent's phone shows (no header injection)."""
    clean = _CALLER_NAME_DROP.sub("", name).strip()[:40] or number
    return f'"Callback {clean}" <{number}>'


def may_free_a_turn(change: Change) -> bool:
    """A PBX change after which a waiting booking may be served (the rest is ignored):
    a queue member free now, a queued caller gone (answered, abandoned, ended), a
    link (re)connected."""
    if isinstance(change, QueueMemberChanged):
        return (not change.removed and change.device_state == "NOT_INUSE"
                and not change.paused and not change.in_call)
    if isinstance(change, CallAnswered):
        return change.queue is not None
    return isinstance(change, CallEnded | CallAbandoned | PbxLinkChanged)


def booking_json(row: CallbackBookingRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "call_id": row.call_id,
        "number": row.number,
        "queue": row.queue,
        "queue_entry_time": row.queue_entry_time.isoformat(),
        "customer_id": row.customer_id,
        "conversation_id": row.conversation_id,
        "language": row.language,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat(),
        "last_result": row.last_result,
        "pbx": row.pbx,
        "agent_interface": row.agent_interface,
        "dial_call_id": row.dial_call_id,
        "dial_conversation_id": row.dial_conversation_id,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


@dataclass(slots=True)
class _Watch:
    """What the PBX said about one callback call (filled by the change listener)."""

    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cause: int = 0


class CallbackService:
    def __init__(
        self,
        services: Services,
        links: LinksProvider,
        *,
        attempts: int | None = None,
        retry_delay: float | None = None,
        agent_ring_timeout: float = 20.0,
        decline_memory: float = 60.0,
        tick: float = 1.0,
        follow_check: float = 5.0,
        first_delay: float = 5.0,
        pbx: str | None = None,
    ) -> None:
        self._services = services
        self._all_links = links
        # The PBX this scheduler serves (cluster: duty ``callbacks:<pbx>``); None = every link.
        self.pbx = pbx
        self.peers: list[CallbackService] = []  # schedulers of this node to wake on a booking
        self.attempts = attempts if attempts is not None else services.settings.callback_attempts
        self.retry_delay = (
            retry_delay if retry_delay is not None else services.settings.callback_retry_delay
        )
        self.agent_ring_timeout = agent_ring_timeout
        self.decline_memory = decline_memory
        self.tick = tick
        self.follow_check = follow_check
        self.first_delay = first_delay  # the caller is still hearing the IVR's goodbye
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[int, str] = {}  # booking id -> agent interface being dialled
        self._declined: dict[tuple[int, str], float] = {}  # (booking, agent) -> until
        self._watches: dict[str, _Watch] = {}  # callback call id -> watch
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._next_recheck = 0.0
        self._stopping = False
        # The cheap tick (see the module doc): what may let a due booking through.
        self._dirty = True
        self._next_due: float | None = None  # earliest waiting next_attempt_at (epoch s)
        self._due_known = False
        self._last_pass = 0.0  # epoch s of the last full pass
        self._retry_at: float | None = None  # monotonic: a skipped agent may be asked again
        self.passes = 0  # full passes made (tests and benchmarks read it)
        self._last_up: set[str] = set()  # the links up at the last tick

    def scoped(self, pbx: str) -> CallbackService:
        """A scheduler for ``pbx`` only, with this one's settings (cluster: one per PBX)."""
        return CallbackService(
            self._services, self._all_links, attempts=self.attempts,
            retry_delay=self.retry_delay, agent_ring_timeout=self.agent_ring_timeout,
            decline_memory=self.decline_memory, tick=self.tick, follow_check=self.follow_check,
            first_delay=self.first_delay, pbx=pbx)

    def _links(self) -> Mapping[str, AmiLink]:
        links = self._all_links()
        if self.pbx is None:
            return links
        link = links.get(self.pbx)
        return {self.pbx: link} if link is not None else {}

    def _configured(self) -> set[str]:
        """Every PBX of the server: linked here, or configured (cluster: held anywhere)."""
        return set(self._all_links()) | {s.name for s in self._services.settings.ami}

    def _scope(self) -> ColumnElement[bool] | None:
        """The bookings this scheduler serves: its PBX's, and those of no known PBX."""
        if self.pbx is None:
            return None
        col = CallbackBookingRow.pbx
        others = sorted(self._configured() - {self.pbx})
        return or_(col == self.pbx, col.is_(None), *([col.not_in(others)] if others else []))

    # -- the IVR port --------------------------------------------------------------

    async def book_callback(self, request: CallbackRequest) -> CallbackBooking:
        """Keep a virtual place in line; booking twice for one call returns the same booking."""
        call_id = request.call_id.strip()
        if not call_id or len(call_id) > MAX_CALL_ID:
            raise PortError(f"call_id must have 1..{MAX_CALL_ID} characters")
        existing = await self._by_call_id(call_id)
        if existing is not None:
            return CallbackBooking(str(existing.id), existing.number)
        number = self._number(request.number)
        if not _QUEUE.match(request.queue):
            raise PortError(f"queue {request.queue[:80]!r} is not a queue name")
        entry = request.queue_entry_time
        now = time.time()
        if not math.isfinite(entry) or entry <= 0 or entry > now + 60:
            entry = now
        customer = await self._customer(request.customer_id, number)
        conversation_id, pbx = await self._original_conversation(call_id)
        row = CallbackBookingRow(
            call_id=call_id,
            number=number,
            queue=request.queue,
            queue_entry_time=datetime.fromtimestamp(entry, UTC),
            customer_id=customer.id,
            conversation_id=conversation_id,
            language=request.language[:32],
            status="waiting",
            attempts=0,
            next_attempt_at=utcnow() + timedelta(seconds=self.first_delay),
            last_result="",
            pbx=pbx,
        )
        try:
            async with self._services.sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            again = await self._by_call_id(call_id)
            if again is None:
                raise
            return CallbackBooking(str(again.id), again.number)
        await self._event(row, "callback_booked", {"queue": row.queue, "number": number,
                                                   "language": row.language}, "booked",
                          conversation_id)
        for scheduler in (self, *self.peers):
            scheduler._nudge(refresh=True)
        return CallbackBooking(str(row.id), number)

    def _number(self, raw: str) -> str:
        if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_NUMBER:
            raise PortError(f"the number must have 1..{MAX_NUMBER} characters")
        try:
            ident = self._services.customers.normalise(IdentityKind.PHONE, raw)
        except InvalidInput as exc:
            raise PortError(f"{raw!r} is not a phone number: {exc.message}") from None
        if not ident.valid or not ident.value.startswith("+"):
            raise PortError(f"{raw!r} is not a valid phone number")
        return ident.value

    async def _customer(self, customer_id: str | None, number: str) -> Customer:
        if customer_id and customer_id.isdigit() and len(customer_id) <= 18:
            with contextlib.suppress(NotFound):
                return await self._services.customers.get(int(customer_id))
        customer, _ = await self._services.customers.identify(IdentityKind.PHONE, number)
        return customer

    async def _original_conversation(self, call_id: str) -> tuple[int | None, str | None]:
        """The voice conversation of the call that booked (``<pbx>:<uniqueid>``) and its
        PBX: every configured PBX is looked at (in a cluster the IVR's node may hold none).
        Two PBXes with a conversation for that id: the PBX is unknown (None)."""
        found: list[tuple[int, str | None]] = []
        for name in sorted(self._configured()):
            conv = await self._services.conversations.by_ref(f"{name}:{call_id}")
            if conv is not None:
                found.append((conv.id, name))
        if not found:
            conv = await self._services.conversations.by_ref(call_id)
            return (conv.id, None) if conv is not None else (None, None)
        return found[0][0], found[0][1] if len(found) == 1 else None

    async def _by_call_id(self, call_id: str) -> CallbackBookingRow | None:
        async with self._services.sessions() as session:
            return await session.scalar(
                select(CallbackBookingRow).where(CallbackBookingRow.call_id == call_id)
            )

    # -- queries and cancel -----------------------------------------------------------

    async def get(self, booking_id: int) -> CallbackBookingRow:
        async with self._services.sessions() as session:
            row = await session.get(CallbackBookingRow, booking_id)
        if row is None:
            raise NotFound(f"no callback {booking_id}", id=booking_id)
        return row

    async def list_bookings(
        self, status: str | None = None, limit: int = 100
    ) -> list[CallbackBookingRow]:
        """Bookings in place-in-line order (``queue_entry_time``), newest closed last."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
        query = select(CallbackBookingRow).order_by(
            CallbackBookingRow.queue_entry_time, CallbackBookingRow.id
        )
        if status is not None:
            query = query.where(CallbackBookingRow.status == status)
        async with self._services.sessions() as session:
            return list((await session.scalars(query.limit(limit))).all())

    async def cancel(self, booking_id: int) -> CallbackBookingRow:
        """Cancel a waiting booking (or one being dialled: the call in progress goes on)."""
        row = await self.get(booking_id)
        if row.status not in ("waiting", "calling"):
            raise Conflict(f"the callback is {row.status}", id=booking_id, status=row.status)
        if not await self._move(row, (row.status,), status="cancelled", last_result="cancelled"):
            raise Conflict("the callback changed meanwhile; try again", id=booking_id)
        await self._event(row, "callback_cancelled", {}, "cancelled", row.conversation_id)
        return await self.get(booking_id)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._dirty, self._due_known, self._next_recheck = True, False, 0.0
        if self._scheduler is None:
            name = "callback-scheduler" + (f"-{self.pbx}" if self.pbx else "")
            self._scheduler = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        self._stopping = True
        task, self._scheduler = self._scheduler, None
        tasks = [t for t in (task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.error("callbacks: %d tasks did not stop within %g s", len(pending),
                          STOP_TIMEOUT)

    async def on_change(self, change: Change) -> None:
        """A ``CallHandler`` listener: follow our calls; note what may free a turn."""
        if self.pbx is not None and change.pbx != self.pbx:
            return
        if isinstance(change, CallAnswered | CallEnded):
            watch = self._watches.get(change.call_id)
            if watch is not None:
                if isinstance(change, CallAnswered):
                    watch.answered.set()
                else:
                    watch.cause = change.cause
                    watch.ended.set()
        if may_free_a_turn(change):
            self._nudge()

    def _nudge(self, *, refresh: bool = False) -> None:
        """Something may let a booking through: a pass at the next tick if one is due."""
        self._dirty = True
        if refresh:
            self._due_known = False
            self._wake.set()
        elif self._next_due is not None and self._next_due <= time.time():
            self._wake.set()

    async def _run(self) -> None:
        # Quirk: Python 3.11's asyncio.wait_for can swallow a cancellation that arrives
        # as the inner wait completes (the wake event is set on every PBX change), so
        # waits use asyncio.timeout and the loop also checks ``_stopping``.
        while not self._stopping:
            try:
                await self.tick_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._dirty = True
                log.exception("callback scheduler pass failed; next pass in %g s", self.tick)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.25)  # coalesce bursts of PBX changes into one pass

    # -- scheduling -------------------------------------------------------------------

    async def tick_once(self) -> bool:
        """One scheduler tick: O(1) unless a pass is needed; True if a pass was made."""
        mono = time.monotonic()
        if mono >= self._next_recheck:
            self._next_recheck = mono + self.follow_check
            await self._recheck(self._up_links())
            self._due_known = False  # bookings made on other nodes, moves by the re-check
        if not self._due_known:
            self._next_due = await self._earliest_due()
            self._due_known = True
        now = time.time()
        if self._next_due is None or self._next_due > now:
            return False
        links = self._up_links()
        if links.keys() != self._last_up:  # a link came up (or went): look again
            self._last_up = set(links)
            self._dirty = True
        became_due = self._next_due > self._last_pass
        retry = self._retry_at is not None and self._retry_at <= mono
        if not (self._dirty or became_due or retry):
            return False
        self._dirty, self._retry_at, self._last_pass = False, None, now
        await self._serve(links)
        self._due_known = False
        return True

    async def _earliest_due(self) -> float | None:
        query = (select(func.min(CallbackBookingRow.next_attempt_at))
                 .where(CallbackBookingRow.status == "waiting"))
        scope = self._scope()
        if scope is not None:
            query = query.where(scope)
        async with self._services.sessions() as session:
            due = await session.scalar(query)
        return None if due is None else due.timestamp()

    def _up_links(self) -> dict[str, AmiLink]:
        return {name: link for name, link in self._links().items() if link.health().up}

    async def run_once(self) -> None:
        """One full pass: re-check orphaned ``calling`` bookings, then serve whose turn came."""
        links = self._up_links()
        if time.monotonic() >= self._next_recheck:
            self._next_recheck = time.monotonic() + self.follow_check
            await self._recheck(links)
        await self._serve(links)

    async def _serve(self, links: Mapping[str, AmiLink]) -> None:
        self.passes += 1
        if not links or not self._any_free_agent(links):
            return
        for row in await self.due_bookings():
            if row.id in self._active:
                continue
            placed = self._place(row, links)
            if placed is None:
                continue
            link, interface = placed
            self._active[row.id] = interface
            self._spawn(self._attempt(row, link, interface), f"callback-{row.id}")

    async def due_bookings(self) -> list[CallbackBookingRow]:
        """The waiting bookings due now that this scheduler serves, in place-in-line order
        (its PBX's and those of no known PBX), at most ``MAX_PASS``."""
        query = (select(CallbackBookingRow)
                 .where(CallbackBookingRow.status == "waiting",
                        CallbackBookingRow.next_attempt_at <= utcnow())
                 .order_by(CallbackBookingRow.queue_entry_time, CallbackBookingRow.id)
                 .limit(MAX_PASS))
        scope = self._scope()
        if scope is not None:
            query = query.where(scope)
        async with self._services.sessions() as session:
            return list((await session.scalars(query)).all())

    def _reserved(self) -> set[str]:
        return set(self._active.values())

    def _any_free_agent(self, links: Mapping[str, AmiLink]) -> bool:
        reserved = self._reserved()
        return any(
            agent_is_free(m) and m.interface not in reserved
            for link in links.values() for q in link.queues() for m in q.members
        )

    def _place(
        self, row: CallbackBookingRow, links: Mapping[str, AmiLink]
    ) -> tuple[AmiLink, str] | None:
        entry = row.queue_entry_time.timestamp()
        reserved = self._reserved()
        now = time.monotonic()
        if row.pbx is not None and row.pbx in self._configured():
            # The booking's PBX is known: only its queue there (its link may be down).
            link_of = links.get(row.pbx)
            links = {row.pbx: link_of} if link_of is not None else {}
        for link in links.values():
            queue = link.queue(row.queue)
            if queue is None or earlier_caller_waits(queue, entry):
                continue
            for member in queue.members:
                if not agent_is_free(member) or member.interface in reserved:
                    continue
                until = self._declined.get((row.id, member.interface), 0.0)
                if until > now:
                    self._retry_at = until if self._retry_at is None else min(self._retry_at,
                                                                               until)
                    continue
                return link, member.interface
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self, links: Mapping[str, AmiLink]) -> None:
        query = (select(CallbackBookingRow)
                 .where(CallbackBookingRow.status.in_(("calling", "connected")))
                 .limit(MAX_PASS))
        scope = self._scope()
        if scope is not None:
            query = query.where(scope)
        async with self._services.sessions() as session:
            rows = (await session.scalars(query)).all()
        # A PBX we know of (linked here, or configured: in cluster mode only the lease
        # holder runs the links) whose link is not up here: look again later.
        known = self._configured()
        for row in rows:
            if row.id in self._active:
                continue
            if row.pbx in known and row.pbx not in links:
                continue
            link = links.get(row.pbx or "")
            snap = link.call(row.dial_call_id) if link and row.dial_call_id else None
            if link is None or snap is None or row.dial_call_id is None:
                if row.status == "connected":
                    await self._move(row, ("connected",), status="done", last_result="ended")
                else:
                    with correlate(f"callback:{row.id}"):
                        log.info("callback %s: the attempt was interrupted (call %s gone); "
                                 "again in %g s", row.id, row.dial_call_id, self.retry_delay)
                    await self._move(row, ("calling",), status="waiting",
                                     last_result="interrupted",
                                     next_attempt_at=utcnow()
                                     + timedelta(seconds=self.retry_delay))
                    self._nudge(refresh=True)
                continue
            self._active[row.id] = row.agent_interface or ""
            watch = self._watches.setdefault(row.dial_call_id, _Watch())
            if snap.state.value == "connected" or row.status == "connected":
                watch.answered.set()
            self._spawn(self._follow_guarded(row, link, row.dial_call_id, watch),
                        f"callback-{row.id}-resume")

    # -- one attempt ------------------------------------------------------------------

    async def _attempt(self, row: CallbackBookingRow, link: AmiLink, interface: str) -> None:
        with correlate(f"callback:{row.id}"):
            try:
                await self._attempt_inner(row, link, interface)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("callback %s: attempt failed unexpectedly", row.id)
                await self._move(row, ("calling",), status="waiting", last_result="error",
                                 next_attempt_at=utcnow() + timedelta(seconds=self.retry_delay))
            finally:
                self._active.pop(row.id, None)
                self._nudge(refresh=True)

    async def _attempt_inner(self, row: CallbackBookingRow, link: AmiLink, interface: str) -> None:
        correlation = new_correlation_id()
        call_ref = link.tracker.call_id(f"cti-{correlation}")
        if not await self.claim(row, link.name, interface, call_ref):
            return  # cancelled or taken meanwhile
        svc = self._services
        customer = await svc.customers.get(row.customer_id)
        conv, _ = await svc.conversations.open(
            "voice", customer.id, queue=row.queue, contact=row.number, external_ref=call_ref,
            linked_to_id=row.conversation_id,
        )
        if not await self._move(row, ("calling",), dial_conversation_id=conv.id):
            return  # cancelled meanwhile: nobody is called
        agent = await svc.agents.by_endpoint(interface)
        if agent is not None:
            await svc.screen_pop.pop(agent, conv, {
                "kind": "callback", "booking_id": row.id, "queue": row.queue,
                "caller": row.number, "caller_name": customer.name, "call_id": call_ref,
                "pbx": link.name, "attempt": row.attempts + 1,
                "queue_entry_time": row.queue_entry_time.isoformat(),
            })
        watch = self._watches.setdefault(call_ref, _Watch())
        try:
            await link.originate(
                interface, row.number, caller_id=callback_caller_id(customer.name, row.number),
                correlation_id=correlation, ring_timeout=self.agent_ring_timeout,
                variables={"CTI_CALLBACK_ID": str(row.id),
                           **({"CTI_OUTBOUND_CID": svc.settings.callback_caller_id}
                              if svc.settings.callback_caller_id else {})},
            )
        except OriginateFailed as exc:
            self._watches.pop(call_ref, None)
            self._declined[(row.id, interface)] = time.monotonic() + self.decline_memory
            await self._attempt_event(row, conv.id, correlation, "agent_no_answer", interface,
                                      counted=False, reason=exc.reason)
            await self._move(row, ("calling",), status="waiting", last_result="agent_no_answer",
                             next_attempt_at=utcnow())
            return
        except (PbxUnavailable, AmiActionError, BadActionArgument) as exc:
            self._watches.pop(call_ref, None)
            result = "pbx_unavailable" if isinstance(exc, PbxUnavailable) else "pbx_refused"
            log.warning("callback %s: originate to %s failed: %s", row.id, interface, exc)
            await self._move(row, ("calling",), status="waiting", last_result=result,
                             next_attempt_at=utcnow() + timedelta(seconds=self.retry_delay))
            return
        except UnknownOutcome:
            log.warning("callback %s: originate outcome unknown; following %s", row.id, call_ref)
        await self._follow(row, link, call_ref, watch, conv.id, correlation)

    async def claim(self, row: CallbackBookingRow, pbx: str, interface: str,
                    call_ref: str) -> bool:
        """``waiting -> calling`` through ``pbx``, only for the version of the row this
        pass read: another scheduler (another node) may have claimed, tried and put it
        back meanwhile; then it is not ours to dial. One UPDATE: atomic in the database."""
        return await self._move(row, ("waiting",), version=row.updated_at, status="calling",
                                pbx=pbx, agent_interface=interface, dial_call_id=call_ref)

    async def _follow_guarded(
        self, row: CallbackBookingRow, link: AmiLink, call_ref: str, watch: _Watch
    ) -> None:
        with correlate(f"callback:{row.id}"):
            try:
                await self._follow(row, link, call_ref, watch, row.dial_conversation_id,
                                   "resumed")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("callback %s: following %s failed", row.id, call_ref)
            finally:
                self._active.pop(row.id, None)
                self._nudge(refresh=True)

    async def _wait_for(self, event: asyncio.Event, link: AmiLink, call_ref: str) -> bool:
        """Until ``event`` is set (True) or the call is gone from the PBX state (False)."""
        while not event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.follow_check):
                    await event.wait()
            if not event.is_set() and link.health().up and link.call(call_ref) is None:
                await asyncio.sleep(self.follow_check / 5)  # let a last change land
                return event.is_set()
        return True

    async def _follow(
        self, row: CallbackBookingRow, link: AmiLink, call_ref: str, watch: _Watch,
        conv_id: int | None, correlation: str,
    ) -> None:
        try:
            first = asyncio.create_task(self._wait_for(watch.answered, link, call_ref))
            ended = asyncio.create_task(watch.ended.wait())
            try:
                await asyncio.wait({first, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (first, ended):
                    t.cancel()
                await asyncio.gather(first, ended, return_exceptions=True)
            if watch.answered.is_set():
                if row.status != "connected" and await self._move(
                        row, ("calling",), status="connected", last_result="connected"):
                    await self._attempt_event(row, conv_id, correlation, "connected",
                                              row.agent_interface or "", counted=True)
                    await self._event(row, "callback_connected",
                                      {"agent_interface": row.agent_interface,
                                       "call_id": call_ref}, "connected", conv_id)
                await self._wait_for(watch.ended, link, call_ref)
                await self._move(row, ("connected",), status="done", last_result="ended")
                return
            result = "busy" if watch.cause in BUSY_CAUSES else "no_answer"
            attempts = row.attempts + 1
            await self._attempt_event(row, conv_id, correlation, result,
                                      row.agent_interface or "", counted=True, cause=watch.cause)
            if attempts >= self.attempts:
                if await self._move(row, ("calling",), status="failed", attempts=attempts,
                                    last_result=result):
                    await self._event(row, "callback_failed",
                                      {"attempts": attempts, "result": result}, "failed", conv_id)
            else:
                await self._move(row, ("calling",), status="waiting", attempts=attempts,
                                 last_result=result,
                                 next_attempt_at=utcnow() + timedelta(seconds=self.retry_delay))
        finally:
            self._watches.pop(call_ref, None)

    # -- persistence and history ------------------------------------------------------

    async def _move(self, row: CallbackBookingRow, from_: tuple[str, ...], *,
                    version: datetime | None = None, **values: Any) -> bool:
        """Conditional update (status in ``from_``, and ``updated_at == version`` when
        given); on success ``row`` mirrors it."""
        values.setdefault("updated_at", utcnow())
        query = update(CallbackBookingRow).where(CallbackBookingRow.id == row.id,
                                                 CallbackBookingRow.status.in_(from_))
        if version is not None:
            query = query.where(CallbackBookingRow.updated_at == version)
        async with self._services.sessions() as session, session.begin():
            result = await session.execute(query.values(**values))
        if getattr(result, "rowcount", 0) != 1:
            return False
        for key, value in values.items():
            setattr(row, key, value)
        return True

    async def _event(
        self, row: CallbackBookingRow, kind: str, payload: dict[str, Any], key: str,
        conversation_id: int | None,
    ) -> None:
        await self._services.history.add(HistoryEntry(
            customer_id=row.customer_id,
            conversation_id=conversation_id,
            kind=kind,
            channel="voice",
            payload={"booking_id": row.id, "queue": row.queue, "call_id": row.call_id,
                     **payload},
            dedup_key=f"callback:{row.id}:{key}"[:200],
        ))

    async def _attempt_event(
        self, row: CallbackBookingRow, conv_id: int | None, correlation: str, result: str,
        interface: str, *, counted: bool, **extra: Any,
    ) -> None:
        await self._event(row, "callback_attempt", {
            "result": result, "agent_interface": interface, "counted": counted,
            "attempt": row.attempts + (1 if counted else 0), "number": row.number, **extra,
        }, f"attempt:{correlation}:{result}", conv_id)


CALLBACKS = web.AppKey("callbacks", CallbackService)

routes = web.RouteTableDef()


@routes.get("/api/v1/callbacks")
async def list_callbacks(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    status = request.query.get("status") or None
    limit = query_int(request, "limit", 100, 1, 500)
    rows = await request.app[CALLBACKS].list_bookings(status, limit)
    return web.json_response({"items": [booking_json(r) for r in rows]})


@routes.get(r"/api/v1/callbacks/{id:\d{1,18}}")
async def get_callback(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    return web.json_response(booking_json(await request.app[CALLBACKS].get(path_id(request))))


@routes.delete(r"/api/v1/callbacks/{id:\d{1,18}}")
async def cancel_callback(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    row = await request.app[CALLBACKS].cancel(path_id(request))
    return web.json_response(booking_json(row))


def _callbacks_ctx(app: web.Application) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        service = app[CALLBACKS]
        calls = services_of(app).calls
        duties = duties_of(app) or local_duties()
        leases = app.get(LEASES)
        pbxs = [s.name for s in services_of(app).settings.ami]
        schedulers: dict[str, CallbackService] = {}
        if duties.clustered and leases is not None and pbxs:
            # One scheduler per PBX, on the node holding its AMI lease (it dials there).
            for name in pbxs:
                schedulers[f"{DUTY}:{name}"] = service.scoped(name)
        else:
            schedulers[DUTY] = service
        service.peers = [s for s in schedulers.values() if s is not service]
        for scheduler in schedulers.values():
            calls.listeners.append(scheduler.on_change)
        try:
            for duty, scheduler in schedulers.items():
                eligible: Callable[[], bool] | None = None
                if duties.clustered:
                    eligible = (duties.holds_pbx if scheduler.pbx is None or leases is None
                                else holds_pbx_lease(leases, scheduler.pbx))
                await duties.add(duty, scheduler.start, scheduler.stop, eligible=eligible)
            yield
        finally:
            for duty, scheduler in schedulers.items():
                await duties.remove(duty)
                with contextlib.suppress(ValueError):
                    calls.listeners.remove(scheduler.on_change)
            service.peers = []

    return ctx


def holds_pbx_lease(leases: Mapping[str, Lease], pbx: str) -> Callable[[], bool]:
    """Eligibility of ``callbacks:<pbx>``: this node holds ``pbx:<pbx>`` (``LEASES``)."""

    def holds() -> bool:
        lease = leases.get(pbx)
        return lease is not None and lease.held

    return holds


def services_of(app: web.Application) -> Services:
    return app[SERVICES]


def setup_callbacks(app: web.Application, **options: Any) -> CallbackService:
    """Install the callback service (``CALLBACKS``), its scheduler and REST routes (once)."""
    existing = app.get(CALLBACKS)
    if existing is not None:
        return existing
    def links() -> Mapping[str, AmiLink]:
        registry = app.get(PBX_LINKS)
        return dict(registry.links) if registry is not None else {}

    service = CallbackService(services_of(app), links, **options)
    app[CALLBACKS] = service
    app.add_routes(routes)
    app.cleanup_ctx.append(_callbacks_ctx(app))
    return service

