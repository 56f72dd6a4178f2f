"""Typed AMI events: frozen, slotted dataclasses decoded from :class:`AmiMessage`.

``decode_event(msg)`` returns the typed event, or ``None`` for an event the
server does not use. A missing required header raises :class:`EventError`
(never an empty string); a non-numeric value where a number is due too.
Field names map to AMI header names through one table (``HEADER_NAMES``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pbx.framing import AmiMessage


class EventError(ValueError):
    """An AMI event the server uses lacks a header or carries a bad value."""


HEADER_NAMES: dict[str, str] = {
    "channel": "Channel",
    "uniqueid": "Uniqueid",
    "linkedid": "Linkedid",
    "state": "ChannelState",
    "state_desc": "ChannelStateDesc",
    "caller_num": "CallerIDNum",
    "caller_name": "CallerIDName",
    "connected_num": "ConnectedLineNum",
    "connected_name": "ConnectedLineName",
    "context": "Context",
    "exten": "Exten",
    "dest_channel": "DestChannel",
    "dest_uniqueid": "DestUniqueid",
    "dest_linkedid": "DestLinkedid",
    "dest_caller_num": "DestCallerIDNum",
    "dest_caller_name": "DestCallerIDName",
    "dial_string": "DialString",
    "dial_status": "DialStatus",
    "bridge_uniqueid": "BridgeUniqueid",
    "bridge_type": "BridgeType",
    "bridge_num_channels": "BridgeNumChannels",
    "cause": "Cause",
    "cause_txt": "Cause-txt",
    "queue": "Queue",
    "position": "Position",
    "original_position": "OriginalPosition",
    "count": "Count",
    "interface": "Interface",
    "member_name": "MemberName",
    "state_interface": "StateInterface",
    "membership": "Membership",
    "penalty": "Penalty",
    "calls_taken": "CallsTaken",
    "last_call": "LastCall",
    "in_call": "InCall",
    "status": "Status",
    "paused": "Paused",
    "paused_reason": "PausedReason",
    "hold_time": "HoldTime",
    "ring_time": "RingTime",
    "talk_time": "TalkTime",
    "reason": "Reason",
    "digit": "Digit",
    "direction": "Direction",
    "duration_ms": "DurationMs",
    "result": "Result",
    "is_external": "IsExternal",
    "extension": "Extension",
    "transferer_channel": "TransfererChannel",
    "transferer_linkedid": "TransfererLinkedid",
    "transferee_channel": "TransfereeChannel",
    "transferee_linkedid": "TransfereeLinkedid",
    "orig_transferer_channel": "OrigTransfererChannel",
    "orig_transferer_linkedid": "OrigTransfererLinkedid",
    "second_transferer_channel": "SecondTransfererChannel",
    "second_transferer_linkedid": "SecondTransfererLinkedid",
    "transfer_target_channel": "TransferTargetChannel",
    "transfer_target_linkedid": "TransferTargetLinkedid",
    "dest_type": "DestType",
    "user_event": "UserEvent",
    "application": "Application",
    "application_data": "ApplicationData",
    "duration": "Duration",
    "bridge_id": "BridgeId",
    "max": "Max",
    "strategy": "Strategy",
    "calls": "Calls",
    "holdtime": "Holdtime",
    "talktime": "TalkTime",
    "completed": "Completed",
    "abandoned": "Abandoned",
    "name": "Name",
    "location": "Location",
    "wait": "Wait",
    "logged_in": "LoggedIn",
    "available": "Available",
    "callers": "Callers",
    "longest_hold_time": "LongestHoldTime",
    "startup_date": "CoreStartupDate",
    "startup_time": "CoreStartupTime",
    "reload_date": "CoreReloadDate",
    "reload_time": "CoreReloadTime",
    "current_calls": "CoreCurrentCalls",
}

INT_FIELDS = frozenset({
    "state", "bridge_num_channels", "cause", "position", "original_position", "count",
    "penalty", "calls_taken", "last_call", "in_call", "status", "paused", "hold_time",
    "ring_time", "talk_time", "duration_ms", "max", "calls", "holdtime", "talktime",
    "completed", "abandoned", "wait", "logged_in", "available", "callers",
    "longest_hold_time", "current_calls",
})

_Spec = tuple[tuple[str, str, str, bool, Callable[[str], Any]], ...]
EVENT_TYPES: dict[str, type[AmiEvent]] = {}


def _as_str(v: str) -> str:
    return v


def _as_int(v: str) -> int:
    return int(v.strip() or "0")


@dataclass(frozen=True, slots=True)
class AmiEvent:
    NAME: ClassVar[str] = ""
    SPEC: ClassVar[_Spec] = ()


def _event(name: str) -> Callable[[type[Any]], type[Any]]:
    def register(cls: type[Any]) -> type[Any]:
        spec = []
        for f in dataclasses.fields(cls):
            if f.name == "headers":
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            conv = _as_int if f.name in INT_FIELDS else _as_str
            header = HEADER_NAMES[f.name]
            spec.append((f.name, header.lower(), header, required, conv))
        cls.NAME = name
        cls.SPEC = tuple(spec)
        EVENT_TYPES[name.lower()] = cls
        return cls

    return register


@dataclass(frozen=True, slots=True)
class ChannelEvent(AmiEvent):
    channel: str
    uniqueid: str
    linkedid: str
    state: int = 0
    state_desc: str = ""
    caller_num: str = ""
    caller_name: str = ""
    connected_num: str = ""
    connected_name: str = ""
    context: str = ""
    exten: str = ""


@_event("Newchannel")
@dataclass(frozen=True, slots=True)
class Newchannel(ChannelEvent):
    pass


@_event("Newstate")
@dataclass(frozen=True, slots=True)
class Newstate(ChannelEvent):
    pass


@_event("NewCallerid")
@dataclass(frozen=True, slots=True)
class NewCallerid(ChannelEvent):
    pass


@_event("Hangup")
@dataclass(frozen=True, slots=True)
class Hangup(ChannelEvent):
    cause: int = 0
    cause_txt: str = ""


@_event("Hold")
@dataclass(frozen=True, slots=True)
class Hold(ChannelEvent):
    pass


@_event("Unhold")
@dataclass(frozen=True, slots=True)
class Unhold(ChannelEvent):
    pass


@dataclass(frozen=True, slots=True)
class DialEvent(AmiEvent):
    dest_channel: str
    dest_uniqueid: str
    dest_linkedid: str
    channel: str = ""  # absent when nothing dials (Originate)
    uniqueid: str = ""
    linkedid: str = ""
    caller_num: str = ""
    caller_name: str = ""


@_event("DialBegin")
@dataclass(frozen=True, slots=True)
class DialBegin(DialEvent):
    dial_string: str = ""


@_event("DialEnd")
@dataclass(frozen=True, slots=True)
class DialEnd(DialEvent):
    dial_status: str = ""


@dataclass(frozen=True, slots=True)
class BridgeEvent(ChannelEvent):
    bridge_uniqueid: str = ""
    bridge_type: str = ""
    bridge_num_channels: int = 0


@_event("BridgeEnter")
@dataclass(frozen=True, slots=True)
class BridgeEnter(BridgeEvent):
    pass


@_event("BridgeLeave")
@dataclass(frozen=True, slots=True)
class BridgeLeave(BridgeEvent):
    pass


@dataclass(frozen=True, slots=True)
class QueueCallerEvent(ChannelEvent):
    queue: str = ""
    position: int = 0


@_event("QueueCallerJoin")
@dataclass(frozen=True, slots=True)
class QueueCallerJoin(QueueCallerEvent):
    count: int = 0


@_event("QueueCallerLeave")
@dataclass(frozen=True, slots=True)
class QueueCallerLeave(QueueCallerEvent):
    count: int = 0


@_event("QueueCallerAbandon")
@dataclass(frozen=True, slots=True)
class QueueCallerAbandon(QueueCallerEvent):
    original_position: int = 0
    hold_time: int = 0


@dataclass(frozen=True, slots=True)
class AgentEvent(ChannelEvent):
    queue: str = ""
    interface: str = ""
    member_name: str = ""
    dest_channel: str = ""
    dest_uniqueid: str = ""


@_event("AgentCalled")
@dataclass(frozen=True, slots=True)
class AgentCalled(AgentEvent):
    pass


@_event("AgentConnect")
@dataclass(frozen=True, slots=True)
class AgentConnect(AgentEvent):
    hold_time: int = 0
    ring_time: int = 0


@_event("AgentComplete")
@dataclass(frozen=True, slots=True)
class AgentComplete(AgentEvent):
    hold_time: int = 0
    talk_time: int = 0
    reason: str = ""


@_event("AgentRingNoAnswer")
@dataclass(frozen=True, slots=True)
class AgentRingNoAnswer(AgentEvent):
    ring_time: int = 0


@dataclass(frozen=True, slots=True)
class MemberEvent(AmiEvent):
    queue: str
    interface: str
    member_name: str = ""
    state_interface: str = ""
    membership: str = ""
    penalty: int = 0
    calls_taken: int = 0
    last_call: int = 0
    in_call: int = 0
    status: int = 0
    paused: int = 0
    paused_reason: str = ""


@_event("QueueMemberStatus")
@dataclass(frozen=True, slots=True)
class QueueMemberStatus(MemberEvent):
    pass


@_event("QueueMemberPause")
@dataclass(frozen=True, slots=True)
class QueueMemberPause(MemberEvent):
    pass


@_event("QueueMemberAdded")
@dataclass(frozen=True, slots=True)
class QueueMemberAdded(MemberEvent):
    pass


@_event("QueueMemberRemoved")
@dataclass(frozen=True, slots=True)
class QueueMemberRemoved(MemberEvent):
    pass


@_event("DTMFEnd")
@dataclass(frozen=True, slots=True)
class DTMFEnd(ChannelEvent):
    digit: str = ""
    direction: str = ""
    duration_ms: int = 0


@_event("BlindTransfer")
@dataclass(frozen=True, slots=True)
class BlindTransfer(AmiEvent):
    result: str
    transferer_channel: str = ""
    transferer_linkedid: str = ""
    transferee_channel: str = ""
    transferee_linkedid: str = ""
    extension: str = ""
    context: str = ""
    is_external: str = ""


@_event("AttendedTransfer")
@dataclass(frozen=True, slots=True)
class AttendedTransfer(AmiEvent):
    result: str
    orig_transferer_channel: str = ""
    orig_transferer_linkedid: str = ""
    second_transferer_channel: str = ""
    second_transferer_linkedid: str = ""
    transferee_channel: str = ""
    transferee_linkedid: str = ""
    transfer_target_channel: str = ""
    transfer_target_linkedid: str = ""
    dest_type: str = ""


@_event("UserEvent")
@dataclass(frozen=True, slots=True)
class UserEvent(AmiEvent):
    user_event: str
    channel: str = ""
    linkedid: str = ""
    headers: tuple[tuple[str, str], ...] = ()


# Resync: the responses to CoreShowChannels, QueueStatus, QueueSummary, CoreStatus.


@_event("CoreShowChannel")
@dataclass(frozen=True, slots=True)
class CoreShowChannel(ChannelEvent):
    application: str = ""
    application_data: str = ""
    duration: str = ""
    bridge_id: str = ""


@_event("QueueParams")
@dataclass(frozen=True, slots=True)
class QueueParams(AmiEvent):
    queue: str
    max: int = 0
    strategy: str = ""
    calls: int = 0
    holdtime: int = 0
    talktime: int = 0
    completed: int = 0
    abandoned: int = 0


@_event("QueueMember")
@dataclass(frozen=True, slots=True)
class QueueMember(AmiEvent):
    queue: str
    location: str
    name: str = ""
    state_interface: str = ""
    membership: str = ""
    penalty: int = 0
    calls_taken: int = 0
    last_call: int = 0
    in_call: int = 0
    status: int = 0
    paused: int = 0
    paused_reason: str = ""


@_event("QueueEntry")
@dataclass(frozen=True, slots=True)
class QueueEntry(AmiEvent):
    queue: str
    position: int
    channel: str
    uniqueid: str = ""
    caller_num: str = ""
    caller_name: str = ""
    wait: int = 0


@_event("QueueSummary")
@dataclass(frozen=True, slots=True)
class QueueSummary(AmiEvent):
    queue: str
    logged_in: int = 0
    available: int = 0
    callers: int = 0
    hold_time: int = 0
    talk_time: int = 0
    longest_hold_time: int = 0


@dataclass(frozen=True, slots=True)
class CoreStatus(AmiEvent):
    """The response to the CoreStatus action (a Response, not an Event)."""

    startup_date: str
    startup_time: str
    reload_date: str = ""
    reload_time: str = ""
    current_calls: int = 0

    @property
    def started(self) -> str:
        return f"{self.startup_date} {self.startup_time}"


_event("CoreStatus")(CoreStatus)
del EVENT_TYPES["corestatus"]  # a response: decode it with decode_as(CoreStatus, msg)


E = TypeVar("E", bound=AmiEvent)


def decode_as(cls: type[E], msg: AmiMessage) -> E:
    """Decode ``msg`` as ``cls``; missing required headers raise :class:`EventError`."""
    lookup = msg.get
    kwargs: dict[str, Any] = {}
    for name, _key, header, required, conv in cls.SPEC:
        value = lookup(header)
        if value is None:
            if required:
                kind = msg.get("Event") or msg.get("Response") or "message"
                raise EventError(f"AMI {kind} lacks required header {header!r}")
            continue
        try:
            kwargs[name] = conv(value)
        except ValueError:
            raise EventError(f"AMI header {header}={value[:40]!r} is not a number") from None
    if cls is UserEvent:
        kwargs["headers"] = tuple(msg.headers)
    return cls(**kwargs)


def decode_event(msg: AmiMessage) -> AmiEvent | None:
    """The typed event for ``msg``, or ``None`` when the server does not use it."""
    name = msg.event
    if name is None:
        return None
    cls = EVENT_TYPES.get(name.lower())
    if cls is None:
        return None
    return decode_as(cls, msg)


def event_time(msg: AmiMessage, default: float) -> float:
    """The event's ``Timestamp`` header (manager.conf timestampevents) or ``default``."""
    ts = msg.get("Timestamp")
    if ts is None:
        return default
    try:
        return float(ts)
    except ValueError:
        return default
