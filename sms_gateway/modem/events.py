"""Typed events and snapshots the GSM modem driver hands to its user (cti)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

DeliveryState = Literal["delivered", "pending", "failed"]


@dataclass(frozen=True, slots=True)
class SmsReceived:
    """An MO SMS, reassembled. `complete` is False when parts were still missing at the
    reassembly timeout; `missing` then lists their sequence numbers (1-based)."""

    modem: str
    sender: str
    text: str
    received_at: datetime | None
    parts: int
    complete: bool = True
    missing: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """An SMS-STATUS-REPORT for one part. `message_state` combines every part of the
    message: "pending" until each part has a final report."""

    modem: str
    message_id: str | None
    reference: int
    recipient: str
    state: DeliveryState
    tp_status: int
    message_state: DeliveryState


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """RING (+CLIP). The driver never answers; cti records a missed call."""

    modem: str
    number: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class UssdReceived:
    """+CUSD: status 0 = done, 1 = the network waits for an answer, 2 = ended by the network,
    4 = not supported, 5 = timed out."""

    modem: str
    status: int
    text: str


@dataclass(frozen=True, slots=True)
class ModemHealth:
    modem: str
    up: bool
    sim: str
    signal_rssi: int | None = None
    signal_dbm: int | None = None
    registration: str | None = None
    operator: str | None = None
    outbox: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class HealthChanged:
    health: ModemHealth


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    references: tuple[int, ...]


ModemEvent = SmsReceived | DeliveryReport | IncomingCall | UssdReceived | HealthChanged
