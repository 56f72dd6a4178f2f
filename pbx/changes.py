"""Typed change events: what the pbx state trackers emit and cti consumes.

This module is the contract between pbx/ and cti/. Add fields or classes;
never rename or remove one without changing every consumer.

Ids are namespaced by PBX: ``call_id`` is ``"<pbx>:<Linkedid>"`` so several
Asterisk servers never collide. Times are POSIX seconds (float, UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CallState(StrEnum):
    RINGING = "ringing"
    IN_IVR = "in_ivr"
    QUEUED = "queued"
    OFFERED = "offered"
    CONNECTED = "connected"
    ON_HOLD = "on_hold"
    TRANSFERRED = "transferred"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Durations:
    wait: float = 0.0
    ring: float = 0.0
    talk: float = 0.0
    hold: float = 0.0


@dataclass(frozen=True, slots=True)
class CallStarted:
    pbx: str
    call_id: str
    channel: str
    caller_number: str
    caller_name: str
    dialled: str
    at: float


@dataclass(frozen=True, slots=True)
class CallQueued:
    pbx: str
    call_id: str
    queue: str
    position: int
    caller_number: str
    caller_name: str
    at: float


@dataclass(frozen=True, slots=True)
class CallOffered:
    """AgentCalled: an agent's phone rings for a queue call (screen-pop moment)."""

    pbx: str
    call_id: str
    queue: str
    agent_interface: str  # e.g. "PJSIP/agent1"
    caller_number: str
    caller_name: str
    dialled: str
    wait: float
    at: float


@dataclass(frozen=True, slots=True)
class CallAnswered:
    pbx: str
    call_id: str
    queue: str | None
    agent_interface: str
    wait: float
    ring: float
    at: float


@dataclass(frozen=True, slots=True)
class CallHeld:
    pbx: str
    call_id: str
    held: bool
    at: float


@dataclass(frozen=True, slots=True)
class CallTransferred:
    pbx: str
    call_id: str
    kind: str  # "blind" | "attended"
    target: str
    agent_interface: str | None
    at: float


@dataclass(frozen=True, slots=True)
class CallAbandoned:
    """The caller left a queue before an agent answered."""

    pbx: str
    call_id: str
    queue: str
    position: int
    wait: float
    at: float


@dataclass(frozen=True, slots=True)
class CallEnded:
    pbx: str
    call_id: str
    cause: int
    cause_text: str
    reason: str  # "hangup" | "ended during PBX outage" | ...
    queue: str | None
    agent_interface: str | None
    durations: Durations = field(default_factory=Durations)
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class QueueMemberChanged:
    pbx: str
    queue: str
    interface: str
    paused: bool
    pause_reason: str
    device_state: str  # "NOT_INUSE", "INUSE", "RINGING", "UNAVAILABLE", ...
    in_call: bool
    calls_taken: int
    at: float
    removed: bool = False  # QueueMemberRemoved: the interface left the queue


@dataclass(frozen=True, slots=True)
class CallOfferWithdrawn:
    """An agent's phone stopped ringing for a queue call (no answer, or answered elsewhere)."""

    pbx: str
    call_id: str
    queue: str
    agent_interface: str
    reason: str  # "no answer" | "answered elsewhere" | "caller left"
    at: float


@dataclass(frozen=True, slots=True)
class PbxLinkChanged:
    pbx: str
    up: bool
    detail: str
    restarted: bool  # CoreStatus showed a new Asterisk start time
    at: float


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    pbx: str
    call_id: str
    digit: str
    at: float


@dataclass(frozen=True, slots=True)
class UserEventReceived:
    pbx: str
    call_id: str | None
    name: str
    headers: tuple[tuple[str, str], ...]
    at: float


Change = (
    CallStarted
    | CallQueued
    | CallOffered
    | CallOfferWithdrawn
    | CallAnswered
    | CallHeld
    | CallTransferred
    | CallAbandoned
    | CallEnded
    | QueueMemberChanged
    | PbxLinkChanged
    | DtmfReceived
    | UserEventReceived
)
