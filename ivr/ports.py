"""What the IVR needs from the rest of the server, as small Protocols cti implements.

The IVR never imports cti: the server builds objects satisfying these Protocols
and passes them in as one :class:`IvrPorts`. Times are POSIX seconds (float, UTC).
``call_id`` is the Asterisk Uniqueid of the caller's channel (``agi_uniqueid``),
the same in every AGI session of one call (``inbound`` then ``queue-exit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class OrderState(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    display_name: str
    phone: str | None = None
    language: str | None = None  # "en" / "ru" when the customer has a known preference


@dataclass(frozen=True, slots=True)
class OrderStatus:
    order_id: str  # digits, read back to the caller with SAY DIGITS
    state: OrderState


@dataclass(frozen=True, slots=True)
class IvrChoice:
    """One step of one call in the IVR: goes into the customer's history."""

    call_id: str
    step: str  # language, identify, self_service, menu, queue, queue_exit, hangup...
    value: str
    at: float
    customer_id: str | None = None
    caller_number: str = ""


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    waiting: int  # callers in the queue now
    agents_available: int  # logged in, not paused, not on a call
    agents_logged_in: int
    recent_aht: float | None  # recent average handle time in seconds (None: no data)
    position: int | None = None  # the caller's position when the caller is in the queue


@dataclass(frozen=True, slots=True)
class DeflectionRequest:
    """Move a waiting caller to SMS / web chat, keeping the place in line."""

    call_id: str
    caller_number: str
    queue: str
    queue_entry_time: float
    customer_id: str | None
    language: str
    choices: tuple[IvrChoice, ...]


@dataclass(frozen=True, slots=True)
class DeflectionResult:
    conversation_id: str
    sms_sent: bool


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    call_id: str
    number: str  # the number to call back (confirmed or keyed by the caller)
    queue: str
    queue_entry_time: float
    customer_id: str | None
    language: str


@dataclass(frozen=True, slots=True)
class CallbackBooking:
    booking_id: str
    number: str


class PortError(Exception):
    """A port could not do what was asked (the flow tells the caller and falls back)."""


class CustomerDirectory(Protocol):
    async def find_by_phone(self, number: str) -> Customer | None: ...

    async def find_by_reference(self, digits: str) -> Customer | None:
        """An account or order number keyed by the caller."""
        ...


class OrderService(Protocol):
    async def latest_order(self, customer_id: str) -> OrderStatus | None: ...


class IvrHistory(Protocol):
    async def record_choice(self, choice: IvrChoice) -> None: ...

    async def choices_for_call(self, call_id: str) -> Sequence[IvrChoice]: ...


class QueueStatistics(Protocol):
    async def queue_stats(self, queue: str, channel: str | None = None) -> QueueStats:
        """Live statistics; ``channel`` asks for that caller's position too."""
        ...


class Deflection(Protocol):
    async def deflect_to_text(self, request: DeflectionRequest) -> DeflectionResult:
        """Send the SMS with a signed chat link, mark the call deflected, create the
        linked text conversation ranked by ``queue_entry_time``. Raises PortError."""
        ...


class Callbacks(Protocol):
    async def book_callback(self, request: CallbackRequest) -> CallbackBooking:
        """Keep a virtual place in line (ranked by ``queue_entry_time``). Raises PortError."""
        ...


@dataclass(frozen=True, slots=True)
class IvrPorts:
    customers: CustomerDirectory
    orders: OrderService
    history: IvrHistory
    queues: QueueStatistics
    deflection: Deflection
    callbacks: Callbacks
