"""Outbox of outgoing SMS: the durable-store Protocol and an in-memory store.

Each message has an idempotency key: adding a key twice returns the stored
message and sends nothing new. Per part, the store keeps the SMSC message id
once submit_sm_resp arrived (such a part is never sent again) and the latest
delivery-receipt state. Status: queued -> submitted -> delivered | failed | expired.
The cti package implements ``OutboxStore`` on its database; every method must
have made its change durable when it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

from sms_gateway.receipts import PartState, normalize_id

MessageStatus = Literal["queued", "submitted", "delivered", "failed", "expired"]
FINAL_STATUSES = frozenset({"delivered", "failed", "expired"})


@dataclass(frozen=True, slots=True)
class OutboundSms:
    key: str
    destination: str
    text: str
    source: str = ""
    status: MessageStatus = "queued"
    gateway: str = ""
    # One entry per part, filled when the split is known (at enqueue).
    smsc_ids: tuple[str | None, ...] = ()
    part_states: tuple[PartState | None, ...] = ()
    error: str = ""

    @property
    def parts(self) -> int:
        return len(self.smsc_ids)

    def with_part_submitted(self, index: int, smsc_id: str) -> OutboundSms:
        ids = list(self.smsc_ids)
        ids[index] = smsc_id
        return replace(self, smsc_ids=tuple(ids))

    def with_part_state(self, index: int, state: PartState) -> OutboundSms:
        states = list(self.part_states)
        states[index] = state
        return replace(self, part_states=tuple(states))


class OutboxStore(Protocol):
    async def add(self, message: OutboundSms) -> tuple[OutboundSms, bool]:
        """Store a new message; if its key exists, return the stored one and False."""
        ...

    async def get(self, key: str) -> OutboundSms | None: ...

    async def update(self, message: OutboundSms) -> None:
        """Replace the stored message with the same key."""
        ...

    async def unfinished(self, gateway: str) -> list[OutboundSms]:
        """Messages of ``gateway`` still "queued" (some parts may already have an SMSC id),
        oldest first."""
        ...

    async def find_by_smsc_id(self, smsc_id: str) -> tuple[OutboundSms, int] | None:
        """The message and part index whose SMSC id equals ``smsc_id`` once normalised
        with ``receipts.normalize_id``."""
        ...


class InMemoryOutbox:
    """OutboxStore for tests and for running without a database."""

    def __init__(self) -> None:
        self._messages: dict[str, OutboundSms] = {}
        self._by_smsc_id: dict[str, tuple[str, int]] = {}

    async def add(self, message: OutboundSms) -> tuple[OutboundSms, bool]:
        existing = self._messages.get(message.key)
        if existing is not None:
            return existing, False
        self._messages[message.key] = message
        return message, True

    async def get(self, key: str) -> OutboundSms | None:
        return self._messages.get(key)

    async def update(self, message: OutboundSms) -> None:
        if message.key not in self._messages:
            raise KeyError(message.key)
        self._messages[message.key] = message
        for index, smsc_id in enumerate(message.smsc_ids):
            if smsc_id is not None:
                self._by_smsc_id[normalize_id(smsc_id)] = (message.key, index)

    async def unfinished(self, gateway: str) -> list[OutboundSms]:
        return [m for m in self._messages.values() if m.status == "queued" and m.gateway == gateway]

    async def find_by_smsc_id(self, smsc_id: str) -> tuple[OutboundSms, int] | None:
        found = self._by_smsc_id.get(normalize_id(smsc_id))
        if found is None:
            return None
        return self._messages[found[0]], found[1]

    def all(self) -> list[OutboundSms]:
        return list(self._messages.values())
