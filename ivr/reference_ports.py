"""Plain in-memory implementations of the ports: the reference behaviour cti
implements for real, used by the tests and the lab demo. Not for production."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from ivr.ports import (
    CallbackBooking,
    CallbackRequest,
    Customer,
    DeflectionRequest,
    DeflectionResult,
    IvrChoice,
    IvrPorts,
    OrderStatus,
    PortError,
    QueueStats,
)


@dataclass(slots=True)
class MemoryCustomers:
    by_phone: dict[str, Customer] = field(default_factory=dict)
    by_reference: dict[str, Customer] = field(default_factory=dict)

    async def find_by_phone(self, number: str) -> Customer | None:
        return self.by_phone.get(number)

    async def find_by_reference(self, digits: str) -> Customer | None:
        return self.by_reference.get(digits)


@dataclass(slots=True)
class MemoryOrders:
    latest: dict[str, OrderStatus] = field(default_factory=dict)

    async def latest_order(self, customer_id: str) -> OrderStatus | None:
        return self.latest.get(customer_id)


@dataclass(slots=True)
class MemoryHistory:
    """Keeps every choice; ``changed`` wakes waiters (tests wait for a step)."""

    choices: list[IvrChoice] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record_choice(self, choice: IvrChoice) -> None:
        async with self.changed:
            self.choices.append(choice)
            self.changed.notify_all()

    async def choices_for_call(self, call_id: str) -> Sequence[IvrChoice]:
        return [c for c in self.choices if c.call_id == call_id]

    async def wait_for(self, step: str, within: float) -> IvrChoice:
        """The first recorded choice of ``step`` (waits up to ``within`` seconds)."""
        async with asyncio.timeout(within), self.changed:
            while True:
                for choice in self.choices:
                    if choice.step == step:
                        return choice
                await self.changed.wait()


@dataclass(slots=True)
class MemoryQueueStats:
    stats: dict[str, QueueStats] = field(default_factory=dict)

    async def queue_stats(self, queue: str, channel: str | None = None) -> QueueStats:
        return self.stats.get(queue) or QueueStats(queue, 0, 0, 0, None)


@dataclass(slots=True)
class MemoryDeflection:
    requests: list[DeflectionRequest] = field(default_factory=list)
    fail: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def deflect_to_text(self, request: DeflectionRequest) -> DeflectionResult:
        if self.fail:
            raise PortError("SMS gateway unavailable")
        self.requests.append(request)
        return DeflectionResult(f"conv-{next(self._ids)}", sms_sent=True)


@dataclass(slots=True)
class MemoryCallbacks:
    requests: list[CallbackRequest] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def book_callback(self, request: CallbackRequest) -> CallbackBooking:
        self.requests.append(request)
        return CallbackBooking(f"cb-{next(self._ids)}", request.number)


@dataclass(slots=True)
class MemoryPorts:
    customers: MemoryCustomers = field(default_factory=MemoryCustomers)
    orders: MemoryOrders = field(default_factory=MemoryOrders)
    history: MemoryHistory = field(default_factory=MemoryHistory)
    queues: MemoryQueueStats = field(default_factory=MemoryQueueStats)
    deflection: MemoryDeflection = field(default_factory=MemoryDeflection)
    callbacks: MemoryCallbacks = field(default_factory=MemoryCallbacks)

    def ports(self) -> IvrPorts:
        return IvrPorts(self.customers, self.orders, self.history, self.queues,
                        self.deflection, self.callbacks)
