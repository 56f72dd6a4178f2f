"""Live call, queue and agent state of one Asterisk: pure code, no I/O.

Theory of operation
-------------------
``PbxTracker.apply(event, at)`` takes one typed AMI event and its time and
returns the :mod:`pbx.changes` it causes. A *call* is every channel (leg)
sharing one ``Linkedid``: the caller, Local channels of a queue, the agent's
phone, the far end of a transfer. Asterisk gives each new channel the Linkedid
of the channel that created it, so Local channel optimisation and queue member
legs stay in one call; an attended transfer moves the target's leg into the
transferee's call. The call ends when its last leg hangs up.

Call states move along ``CALL_MOVES`` (a transition table owned by the tracker):
ringing -> in IVR (answered by the dialplan) -> queued (QueueCallerJoin) ->
offered (AgentCalled) -> connected (AgentConnect, or a two-party bridge for a
direct call) <-> on hold (Hold/Unhold) -> transferred -> ... -> ended.
A move the table does not allow is ignored (events that arrive late).

Resync after a (re)connect: ``begin_resync()`` marks the event sequence; the
link collects CoreShowChannels/QueueStatus and calls ``finish_resync()``. A
call none of whose legs is still alive, and that no event touched since the
mark, is closed once with reason ``"ended during PBX outage"``; live channels
the tracker did not know become calls; queues are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pbx import events as ev
from pbx.changes import (
    CallAbandoned,
    CallAnswered,
    CallEnded,
    CallHeld,
    CallOffered,
    CallOfferWithdrawn,
    CallQueued,
    CallStarted,
    CallState,
    CallTransferred,
    Change,
    DtmfReceived,
    Durations,
    QueueMemberChanged,
    UserEventReceived,
)

OUTAGE_REASON = "ended during PBX outage"

S = CallState
CALL_MOVES: dict[CallState, frozenset[CallState]] = {
    S.RINGING: frozenset({S.IN_IVR, S.QUEUED, S.OFFERED, S.CONNECTED, S.TRANSFERRED, S.ENDED}),
    S.IN_IVR: frozenset({S.QUEUED, S.OFFERED, S.CONNECTED, S.TRANSFERRED, S.ENDED}),
    S.QUEUED: frozenset({S.OFFERED, S.IN_IVR, S.CONNECTED, S.ENDED}),
    S.OFFERED: frozenset({S.QUEUED, S.IN_IVR, S.CONNECTED, S.ENDED}),
    S.CONNECTED: frozenset({S.ON_HOLD, S.TRANSFERRED, S.QUEUED, S.IN_IVR, S.ENDED}),
    S.ON_HOLD: frozenset({S.CONNECTED, S.TRANSFERRED, S.QUEUED, S.ENDED}),
    S.TRANSFERRED: frozenset({S.QUEUED, S.OFFERED, S.CONNECTED, S.IN_IVR, S.ON_HOLD, S.ENDED}),
    S.ENDED: frozenset(),
}

DEVICE_STATES = {
    0: "UNKNOWN", 1: "NOT_INUSE", 2: "INUSE", 3: "BUSY", 4: "INVALID",
    5: "UNAVAILABLE", 6: "RINGING", 7: "RINGINUSE", 8: "ONHOLD",
}


def device_of(channel: str) -> str:
    """``PJSIP/agent1-0000002a`` -> ``PJSIP/agent1`` (the dialable interface)."""
    base, sep, suffix = channel.rpartition("-")
    if sep and suffix and all(c in "0123456789abcdef" for c in suffix.lower()):
        return base
    return channel


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    call_id: str
    linkedid: str
    state: CallState
    channel: str
    caller_number: str
    caller_name: str
    dialled: str
    queue: str | None
    position: int
    agent_interface: str | None
    legs: tuple[str, ...]
    started_at: float
    durations: Durations


@dataclass(frozen=True, slots=True)
class WaitingCaller:
    call_id: str
    channel: str
    position: int
    caller_number: str
    caller_name: str
    joined_at: float
    wait: float


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    interface: str
    name: str
    device_state: str
    paused: bool
    pause_reason: str
    in_call: bool
    calls_taken: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    pbx: str
    name: str
    waiting: tuple[WaitingCaller, ...]
    longest_wait: float
    members: tuple[MemberSnapshot, ...]
    completed: int
    abandoned: int


@dataclass(slots=True)
class _Call:
    linkedid: str
    call_id: str
    channel: str
    caller_number: str
    caller_name: str
    dialled: str
    started_at: float
    state: CallState = CallState.RINGING
    legs: dict[str, str] = field(default_factory=dict)  # uniqueid -> channel
    queue: str | None = None
    position: int = 0
    queued_at: float | None = None
    wait_total: float = 0.0
    offers: dict[str, float] = field(default_factory=dict)  # interface -> offered at
    ring_total: float = 0.0
    agent_interface: str | None = None
    answered_at: float | None = None
    hold_since: float | None = None
    hold_total: float = 0.0
    cause: int = 0
    cause_text: str = ""
    touched: int = 0

    def durations(self, now: float) -> Durations:
        wait = self.wait_total + (now - self.queued_at if self.queued_at is not None else 0.0)
        hold = self.hold_total + (now - self.hold_since if self.hold_since is not None else 0.0)
        talk = (now - self.answered_at - hold) if self.answered_at is not None else 0.0
        return Durations(wait=wait, ring=self.ring_total, talk=max(talk, 0.0), hold=hold)


@dataclass(slots=True)
class _Member:
    interface: str
    name: str = ""
    status: int = 0
    paused: bool = False
    pause_reason: str = ""
    in_call: bool = False
    calls_taken: int = 0

    def snapshot(self) -> MemberSnapshot:
        return MemberSnapshot(
            interface=self.interface, name=self.name,
            device_state=DEVICE_STATES.get(self.status, str(self.status)),
            paused=self.paused, pause_reason=self.pause_reason, in_call=self.in_call,
            calls_taken=self.calls_taken,
        )


@dataclass(slots=True)
class _Waiting:
    uniqueid: str
    channel: str
    call_id: str
    position: int
    caller_number: str
    caller_name: str
    joined_at: float


@dataclass(slots=True)
class _Queue:
    name: str
    waiting: dict[str, _Waiting] = field(default_factory=dict)  # uniqueid -> entry
    members: dict[str, _Member] = field(default_factory=dict)
    completed: int = 0
    abandoned: int = 0


Handler = Callable[[Any, float, list[Change]], None]


class PbxTracker:
    """Calls, queues and agents of one PBX; ``apply()`` returns the changes."""

    def __init__(self, pbx: str) -> None:
        self.pbx = pbx
        self.calls: dict[str, _Call] = {}  # linkedid -> call
        self.queues: dict[str, _Queue] = {}
        self._leg_call: dict[str, str] = {}  # uniqueid -> linkedid
        self._chan_leg: dict[str, str] = {}  # channel name -> uniqueid
        self._seq = 0
        self._resync_mark: int | None = None
        self._handlers: dict[type[ev.AmiEvent], Handler] = {
            ev.Newchannel: self._newchannel,
            ev.Newstate: self._newstate,
            ev.NewCallerid: self._newcallerid,
            ev.Hangup: self._hangup,
            ev.Hold: self._hold,
            ev.Unhold: self._unhold,
            ev.BridgeEnter: self._bridge_enter,
            ev.BridgeLeave: self._bridge_leave,
            ev.QueueCallerJoin: self._caller_join,
            ev.QueueCallerLeave: self._caller_leave,
            ev.QueueCallerAbandon: self._caller_abandon,
            ev.AgentCalled: self._agent_called,
            ev.AgentRingNoAnswer: self._agent_rna,
            ev.AgentConnect: self._agent_connect,
            ev.AgentComplete: self._agent_complete,
            ev.QueueMemberStatus: self._member,
            ev.QueueMemberPause: self._member,
            ev.QueueMemberAdded: self._member,
            ev.QueueMemberRemoved: self._member_removed,
            ev.DTMFEnd: self._dtmf,
            ev.BlindTransfer: self._blind_transfer,
            ev.AttendedTransfer: self._attended_transfer,
            ev.UserEvent: self._user_event,
        }

    # -- public ---------------------------------------------------------------

    def apply(self, event: ev.AmiEvent, at: float) -> list[Change]:
        handler = self._handlers.get(type(event))
        if handler is None:
            return []
        self._seq += 1
        out: list[Change] = []
        handler(event, at, out)
        return out

    def call_id(self, linkedid: str) -> str:
        return f"{self.pbx}:{linkedid}"

    def call_snapshots(self, now: float) -> tuple[CallSnapshot, ...]:
        return tuple(self._call_snapshot(c, now) for c in self.calls.values())

    def call_snapshot(self, call_id: str, now: float) -> CallSnapshot | None:
        prefix = f"{self.pbx}:"
        if not call_id.startswith(prefix):
            return None
        call = self.calls.get(call_id[len(prefix):])
        return None if call is None else self._call_snapshot(call, now)

    def queue_snapshots(self, now: float) -> tuple[QueueSnapshot, ...]:
        return tuple(self._queue_snapshot(q, now) for q in self.queues.values())

    def queue_snapshot(self, name: str, now: float) -> QueueSnapshot | None:
        q = self.queues.get(name)
        return None if q is None else self._queue_snapshot(q, now)

    # -- snapshots ------------------------------------------------------------

    def _call_snapshot(self, c: _Call, now: float) -> CallSnapshot:
        return CallSnapshot(
            call_id=c.call_id, linkedid=c.linkedid, state=c.state, channel=c.channel,
            caller_number=c.caller_number, caller_name=c.caller_name, dialled=c.dialled,
            queue=c.queue, position=c.position, agent_interface=c.agent_interface,
            legs=tuple(c.legs.values()), started_at=c.started_at, durations=c.durations(now),
        )

    def _queue_snapshot(self, q: _Queue, now: float) -> QueueSnapshot:
        waiting = tuple(
            WaitingCaller(
                call_id=w.call_id, channel=w.channel, position=w.position,
                caller_number=w.caller_number, caller_name=w.caller_name,
                joined_at=w.joined_at, wait=max(now - w.joined_at, 0.0),
            )
            for w in sorted(q.waiting.values(), key=lambda w: w.position)
        )
        return QueueSnapshot(
            pbx=self.pbx, name=q.name, waiting=waiting,
            longest_wait=max((w.wait for w in waiting), default=0.0),
            members=tuple(m.snapshot() for m in q.members.values()),
            completed=q.completed, abandoned=q.abandoned,
        )

    # -- calls ----------------------------------------------------------------

    def _move(self, call: _Call, new: CallState) -> bool:
        if new is call.state:
            return True
        if new not in CALL_MOVES[call.state]:
            return False
        call.state = new
        return True

    def _new_call(self, e: ev.ChannelEvent, at: float, out: list[Change]) -> _Call:
        call = _Call(
            linkedid=e.linkedid, call_id=self.call_id(e.linkedid), channel=e.channel,
            caller_number=e.caller_num, caller_name=e.caller_name, dialled=e.exten,
            started_at=at,
        )
        self.calls[e.linkedid] = call
        out.append(CallStarted(
            pbx=self.pbx, call_id=call.call_id, channel=e.channel,
            caller_number=e.caller_num, caller_name=e.caller_name, dialled=e.exten, at=at,
        ))
        return call

    def _add_leg(self, call: _Call, uniqueid: str, channel: str) -> None:
        call.legs[uniqueid] = channel
        self._leg_call[uniqueid] = call.linkedid
        self._chan_leg[channel] = uniqueid

    def _call_of(self, e: ev.ChannelEvent, at: float, out: list[Change]) -> _Call:
        """The call of ``e``'s channel; a channel never seen (link came up mid-call) joins."""
        linkedid = self._leg_call.get(e.uniqueid)
        call = self.calls.get(linkedid) if linkedid is not None else None
        if call is None:
            call = self.calls.get(e.linkedid) or self._new_call(e, at, out)
            self._add_leg(call, e.uniqueid, e.channel)
        call.touched = self._seq
        return call

    def _known_call(self, uniqueid: str) -> _Call | None:
        linkedid = self._leg_call.get(uniqueid)
        call = self.calls.get(linkedid) if linkedid is not None else None
        if call is not None:
            call.touched = self._seq
        return call

    def _newchannel(self, e: ev.Newchannel, at: float, out: list[Change]) -> None:
        self._call_of(e, at, out)

    def _newstate(self, e: ev.Newstate, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if e.state_desc == "Up" and e.channel == call.channel and call.state is S.RINGING:
            self._move(call, S.IN_IVR)

    def _newcallerid(self, e: ev.NewCallerid, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if e.channel == call.channel:
            call.caller_number, call.caller_name = e.caller_num, e.caller_name

    def _hangup(self, e: ev.Hangup, at: float, out: list[Change]) -> None:
        call = self._known_call(e.uniqueid)
        self._chan_leg.pop(e.channel, None)
        if call is None:
            return
        self._leg_call.pop(e.uniqueid, None)
        call.legs.pop(e.uniqueid, None)
        if e.channel == call.channel or not call.cause:
            call.cause, call.cause_text = e.cause, e.cause_txt
        if not call.legs:
            self._end(call, at, "hangup", out)

    def _end(self, call: _Call, at: float, reason: str, out: list[Change]) -> None:
        if call.queue is not None and call.queued_at is not None:
            self._leave_queue(call, call.queue, at)
        for interface in list(call.offers):
            self._withdraw(call, interface, "caller left", at, out)
        durations = call.durations(at)
        call.state = S.ENDED
        for uniqueid, channel in call.legs.items():
            self._leg_call.pop(uniqueid, None)
            self._chan_leg.pop(channel, None)
        del self.calls[call.linkedid]
        out.append(CallEnded(
            pbx=self.pbx, call_id=call.call_id, cause=call.cause, cause_text=call.cause_text,
            reason=reason, queue=call.queue, agent_interface=call.agent_interface,
            durations=durations, at=at,
        ))

    def _hold(self, e: ev.Hold, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if call.hold_since is None and self._move(call, S.ON_HOLD):
            call.hold_since = at
            out.append(CallHeld(pbx=self.pbx, call_id=call.call_id, held=True, at=at))

    def _unhold(self, e: ev.Unhold, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if call.hold_since is not None:
            call.hold_total += at - call.hold_since
            call.hold_since = None
            self._move(call, S.CONNECTED)
            out.append(CallHeld(pbx=self.pbx, call_id=call.call_id, held=False, at=at))

    def _bridge_enter(self, e: ev.BridgeEnter, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if e.bridge_num_channels < 2 or call.state not in (S.RINGING, S.IN_IVR, S.TRANSFERRED):
            return
        self._connect(call, None, self._agent_among(call, e.channel), at, out)

    def _agent_among(self, call: _Call, entering: str) -> str | None:
        """The agent of a two-party bridge: a queue member's device among the legs
        (click-to-dial rings the agent first, so the agent may be the first leg),
        else the leg that is not the caller's."""
        members = {i for q in self.queues.values() for i in q.members}
        devices = [device_of(ch) for ch in call.legs.values()]
        for device in devices:
            if device in members:
                return device
        if entering != call.channel:
            return device_of(entering)
        peers = [d for d in devices[1:] if not d.startswith("Local/")]
        return peers[-1] if peers else call.agent_interface

    def _bridge_leave(self, e: ev.BridgeLeave, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if e.channel == call.channel and call.state in (S.CONNECTED, S.ON_HOLD):
            # The caller left the agent's bridge alive: a Redirect or a hangup
            # (Hangup follows and ends the call) moves it back into the dialplan.
            self._close_hold(call, at)
            self._move(call, S.IN_IVR)

    def redirected(self, channel: str, exten: str, at: float) -> list[Change]:
        """The link redirected ``channel`` (a blind transfer done over AMI)."""
        uniqueid = self._chan_leg.get(channel)
        call = self._known_call(uniqueid) if uniqueid else None
        if call is None or not self._move(call, S.TRANSFERRED):
            return []
        self._close_hold(call, at)
        return [CallTransferred(pbx=self.pbx, call_id=call.call_id, kind="blind", target=exten,
                                agent_interface=call.agent_interface, at=at)]

    def _connect(
        self, call: _Call, queue: str | None, agent: str | None, at: float, out: list[Change]
    ) -> None:
        if not self._move(call, S.CONNECTED):
            return
        if call.queue is not None and call.queued_at is not None:
            self._leave_queue(call, call.queue, at)
        wait = call.wait_total
        ring = 0.0
        if agent is not None and agent in call.offers:
            ring = at - call.offers.pop(agent)
            call.ring_total += ring
        for other in list(call.offers):
            self._withdraw(call, other, "answered elsewhere", at, out)
        call.agent_interface = agent or call.agent_interface
        if call.answered_at is None:
            call.answered_at = at
        out.append(CallAnswered(
            pbx=self.pbx, call_id=call.call_id, queue=queue,
            agent_interface=call.agent_interface or "", wait=wait, ring=ring, at=at,
        ))

    def _withdraw(self, call: _Call, interface: str, reason: str, at: float,
                  out: list[Change]) -> None:
        offered_at = call.offers.pop(interface, None)
        if offered_at is None:
            return
        if reason != "answered elsewhere":
            call.ring_total += at - offered_at
        out.append(CallOfferWithdrawn(
            pbx=self.pbx, call_id=call.call_id, queue=call.queue or "",
            agent_interface=interface, reason=reason, at=at,
        ))

    # -- queue callers ----------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue(name)
        return q

    def _leave_queue(self, call: _Call, queue: str, at: float) -> float:
        """Stop the call's wait clock; return the wait of this queue stint."""
        stint = at - call.queued_at if call.queued_at is not None else 0.0
        call.wait_total += stint
        call.queued_at = None
        q = self._queue(queue)
        for uniqueid in list(call.legs):
            gone = q.waiting.pop(uniqueid, None)
            if gone is not None:
                for w in q.waiting.values():
                    if w.position > gone.position:
                        w.position -= 1
        return call.wait_total

    def _caller_join(self, e: ev.QueueCallerJoin, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        q = self._queue(e.queue)
        q.waiting[e.uniqueid] = _Waiting(
            uniqueid=e.uniqueid, channel=e.channel, call_id=call.call_id, position=e.position,
            caller_number=e.caller_num, caller_name=e.caller_name, joined_at=at,
        )
        if not self._move(call, S.QUEUED):
            return
        call.queue, call.position = e.queue, e.position
        if call.queued_at is None:
            call.queued_at = at
        out.append(CallQueued(
            pbx=self.pbx, call_id=call.call_id, queue=e.queue, position=e.position,
            caller_number=call.caller_number, caller_name=call.caller_name, at=at,
        ))

    def _caller_leave(self, e: ev.QueueCallerLeave, at: float, out: list[Change]) -> None:
        call = self._known_call(e.uniqueid)
        q = self._queue(e.queue)
        gone = q.waiting.pop(e.uniqueid, None)
        if gone is not None:
            for w in q.waiting.values():
                if w.position > gone.position:
                    w.position -= 1
        if call is None:
            return
        if call.queued_at is not None:
            self._leave_queue(call, e.queue, at)
        # Asterisk sends QueueCallerLeave just before AgentConnect when an agent
        # answers: an offered call stays offered. A queued one left the queue
        # (timeout, exit key, abandon) and goes on in the dialplan.
        if call.state is S.QUEUED:
            self._move(call, S.IN_IVR)

    def _caller_abandon(self, e: ev.QueueCallerAbandon, at: float, out: list[Change]) -> None:
        call = self._known_call(e.uniqueid)
        self._queue(e.queue).abandoned += 1
        if call is None:
            return
        wait = call.wait_total + (at - call.queued_at if call.queued_at is not None else 0.0)
        out.append(CallAbandoned(
            pbx=self.pbx, call_id=call.call_id, queue=e.queue,
            position=e.original_position or e.position, wait=wait, at=at,
        ))

    def _agent_called(self, e: ev.AgentCalled, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        if not self._move(call, S.OFFERED):
            return
        call.offers[e.interface] = at
        wait = call.wait_total + (at - call.queued_at if call.queued_at is not None else 0.0)
        out.append(CallOffered(
            pbx=self.pbx, call_id=call.call_id, queue=e.queue, agent_interface=e.interface,
            caller_number=call.caller_number, caller_name=call.caller_name,
            dialled=call.dialled, wait=wait, at=at,
        ))

    def _agent_rna(self, e: ev.AgentRingNoAnswer, at: float, out: list[Change]) -> None:
        call = self._known_call(e.uniqueid)
        if call is None:
            return
        self._withdraw(call, e.interface, "no answer", at, out)
        if not call.offers and call.state is S.OFFERED:
            self._move(call, S.QUEUED)

    def _agent_connect(self, e: ev.AgentConnect, at: float, out: list[Change]) -> None:
        call = self._call_of(e, at, out)
        self._connect(call, e.queue, e.interface, at, out)

    def _agent_complete(self, e: ev.AgentComplete, at: float, out: list[Change]) -> None:
        self._queue(e.queue).completed += 1

    # -- members ----------------------------------------------------------------

    def _member_update(
        self, queue: str, interface: str, name: str, status: int, paused: bool,
        reason: str, in_call: bool, calls_taken: int, at: float, out: list[Change],
        force: bool = False,
    ) -> None:
        q = self._queue(queue)
        m = q.members.get(interface)
        new = _Member(interface, name, status, paused, reason if paused else "", in_call,
                      calls_taken)
        if m == new and not force:
            return
        q.members[interface] = new
        out.append(self._member_change(queue, new, at))

    def _member_change(self, queue: str, m: _Member, at: float,
                       removed: bool = False) -> QueueMemberChanged:
        return QueueMemberChanged(
            pbx=self.pbx, queue=queue, interface=m.interface, paused=m.paused,
            pause_reason=m.pause_reason, device_state=DEVICE_STATES.get(m.status, str(m.status)),
            in_call=m.in_call, calls_taken=m.calls_taken, at=at, removed=removed,
        )

    def _member(self, e: ev.MemberEvent, at: float, out: list[Change]) -> None:
        self._member_update(
            e.queue, e.interface, e.member_name, e.status, bool(e.paused), e.paused_reason,
            bool(e.in_call), e.calls_taken, at, out, force=isinstance(e, ev.QueueMemberAdded),
        )

    def _member_removed(self, e: ev.QueueMemberRemoved, at: float, out: list[Change]) -> None:
        q = self._queue(e.queue)
        m = q.members.pop(e.interface, None) or _Member(e.interface, e.member_name, e.status)
        out.append(self._member_change(e.queue, m, at, removed=True))

    # -- misc -------------------------------------------------------------------

    def _dtmf(self, e: ev.DTMFEnd, at: float, out: list[Change]) -> None:
        if e.direction != "Received":
            return
        call = self._call_of(e, at, out)
        out.append(DtmfReceived(pbx=self.pbx, call_id=call.call_id, digit=e.digit, at=at))

    def _blind_transfer(self, e: ev.BlindTransfer, at: float, out: list[Change]) -> None:
        if e.result != "Success":
            return
        call = self.calls.get(e.transferee_linkedid)
        if call is None or not self._move(call, S.TRANSFERRED):
            return
        call.touched = self._seq
        self._close_hold(call, at)
        out.append(CallTransferred(
            pbx=self.pbx, call_id=call.call_id, kind="blind", target=e.extension,
            agent_interface=call.agent_interface, at=at,
        ))

    def _attended_transfer(self, e: ev.AttendedTransfer, at: float, out: list[Change]) -> None:
        if e.result != "Success":
            return
        call = self.calls.get(e.transferee_linkedid) or self.calls.get(e.orig_transferer_linkedid)
        if call is None or not self._move(call, S.TRANSFERRED):
            return
        call.touched = self._seq
        self._close_hold(call, at)
        target = device_of(e.transfer_target_channel) if e.transfer_target_channel else ""
        if target.startswith("Local/"):
            target = ""  # the real target joins through a Local channel: see _bridge_enter
        uniqueid = self._chan_leg.get(e.transfer_target_channel)
        if uniqueid is not None:  # the target's leg joins the transferee's call
            old = self._known_call(uniqueid)
            if old is not None and old is not call:
                channel = old.legs.pop(uniqueid)
                self._add_leg(call, uniqueid, channel)
                if not old.legs:
                    self._end(old, at, "transferred", out)
        previous = call.agent_interface
        if target:
            call.agent_interface = target
        out.append(CallTransferred(
            pbx=self.pbx, call_id=call.call_id, kind="attended", target=target,
            agent_interface=previous, at=at,
        ))
        if target:
            self._move(call, S.CONNECTED)

    def _close_hold(self, call: _Call, at: float) -> None:
        if call.hold_since is not None:
            call.hold_total += at - call.hold_since
            call.hold_since = None

    def _user_event(self, e: ev.UserEvent, at: float, out: list[Change]) -> None:
        call = self.calls.get(e.linkedid) if e.linkedid else None
        if call is None and e.channel:
            uniqueid = self._chan_leg.get(e.channel)
            call = self._known_call(uniqueid) if uniqueid else None
        out.append(UserEventReceived(
            pbx=self.pbx, call_id=call.call_id if call else None, name=e.user_event,
            headers=e.headers, at=at,
        ))

    # -- resync -------------------------------------------------------------------

    def begin_resync(self) -> None:
        self._resync_mark = self._seq

    def finish_resync(
        self,
        channels: Iterable[ev.CoreShowChannel],
        members: Iterable[ev.QueueMember],
        entries: Iterable[ev.QueueEntry],
        params: Iterable[ev.QueueParams],
        at: float,
    ) -> list[Change]:
        mark = self._resync_mark if self._resync_mark is not None else self._seq
        self._resync_mark = None
        self._seq += 1
        out: list[Change] = []
        live = {c.uniqueid: c for c in channels}
        for call in list(self.calls.values()):
            if call.touched > mark:
                continue
            for uniqueid in [u for u in call.legs if u not in live]:
                self._chan_leg.pop(call.legs.pop(uniqueid), None)
                self._leg_call.pop(uniqueid, None)
            if not call.legs:
                call.cause, call.cause_text = 0, ""
                self._end(call, at, OUTAGE_REASON, out)
        queued = {e.uniqueid or e.channel: e for e in entries}
        by_linkedid: dict[str, list[ev.CoreShowChannel]] = {}
        for c in live.values():
            if c.uniqueid not in self._leg_call:
                by_linkedid.setdefault(c.linkedid, []).append(c)
        for linkedid, legs in by_linkedid.items():
            legs.sort(key=lambda c: (c.uniqueid != linkedid, c.uniqueid))
            known = linkedid in self.calls
            call = self.calls.get(linkedid) or self._new_call(legs[0], at, out)
            for c in legs:
                self._add_leg(call, c.uniqueid, c.channel)
            call.touched = self._seq
            if known:
                continue
            if legs[0].state_desc == "Up":
                self._move(call, S.IN_IVR)
            entry = next((queued[u] for u in call.legs if u in queued), None)
            bridged = [c for c in legs if c.bridge_id]
            if entry is not None:
                self._move(call, S.QUEUED)
                call.queue, call.position = entry.queue, entry.position
                call.queued_at = at - entry.wait
                out.append(CallQueued(
                    pbx=self.pbx, call_id=call.call_id, queue=entry.queue,
                    position=entry.position, caller_number=call.caller_number,
                    caller_name=call.caller_name, at=at,
                ))
            elif len(bridged) >= 2:
                peer = next((c.channel for c in bridged[1:] if not c.channel.startswith("Local/")),
                            bridged[-1].channel)
                self._connect(call, None, device_of(peer), at, out)
        self._resync_queues(members, queued.values(), params, at, out)
        return out

    def _resync_queues(
        self, members: Iterable[ev.QueueMember], entries: Iterable[ev.QueueEntry],
        params: Iterable[ev.QueueParams], at: float, out: list[Change],
    ) -> None:
        seen: dict[str, set[str]] = {}
        for p in params:
            q = self._queue(p.queue)
            q.completed, q.abandoned = p.completed, p.abandoned
            seen.setdefault(p.queue, set())
        for m in members:
            seen.setdefault(m.queue, set()).add(m.location)
            self._member_update(
                m.queue, m.location, m.name, m.status, bool(m.paused), m.paused_reason,
                bool(m.in_call), m.calls_taken, at, out,
            )
        for name, interfaces in seen.items():
            q = self._queue(name)
            for interface in [i for i in q.members if i not in interfaces]:
                out.append(self._member_change(name, q.members.pop(interface), at, removed=True))
            q.waiting.clear()
        for e in entries:
            linkedid = self._leg_call.get(e.uniqueid)
            call = self.calls.get(linkedid) if linkedid else None
            self._queue(e.queue).waiting[e.uniqueid] = _Waiting(
                uniqueid=e.uniqueid, channel=e.channel,
                call_id=call.call_id if call else self.call_id(e.uniqueid), position=e.position,
                caller_number=e.caller_num, caller_name=e.caller_name, joined_at=at - e.wait,
            )
