"""The call/queue/agent tracker, driven by the typed events of a transcript."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pbx import changes as ch
from pbx import events as ev
from pbx.framing import AmiParser
from pbx.state import OUTAGE_REASON, PbxTracker, device_of

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ami" / "synthetic_queue_call.txt"
T0 = 1763890000.0
C, A = "PJSIP/carrier-00000001", "PJSIP/agent1-00000002"
U1, U2 = "1763890000.1", "1763890000.2"


def _replay(tracker: PbxTracker, data: bytes, until: float | None = None) -> list[ch.Change]:
    out: list[ch.Change] = []
    for msg in AmiParser().messages(data):
        event = ev.decode_event(msg)
        if event is None:
            continue
        at = ev.event_time(msg, 0.0)
        if until is not None and at > until:
            break
        out.extend(tracker.apply(event, at))
    return out


def _chan(cls: type[ev.ChannelEvent], channel: str, uniqueid: str, linkedid: str,
          **kw: object) -> ev.ChannelEvent:
    return cls(channel=channel, uniqueid=uniqueid, linkedid=linkedid, **kw)  # type: ignore[arg-type]


def test_queue_call_lifecycle_with_durations() -> None:
    tracker = PbxTracker("lab")
    changes = [c for c in _replay(tracker, FIXTURE.read_bytes()) if "9.9" not in str(c)]
    kinds = [type(c).__name__ for c in changes]
    assert kinds == [
        "CallStarted", "CallQueued", "CallOffered", "QueueMemberChanged", "CallAnswered",
        "QueueMemberChanged", "DtmfReceived", "UserEventReceived", "CallHeld", "CallHeld",
        "QueueMemberChanged", "CallEnded",
    ]
    started, queued, offered = changes[0], changes[1], changes[2]
    assert isinstance(started, ch.CallStarted)
    assert started.call_id == f"lab:{U1}" and started.caller_name == "Иван Петров"
    assert started.dialled == "100"
    assert isinstance(queued, ch.CallQueued) and queued.queue == "support"
    assert queued.position == 1
    assert isinstance(offered, ch.CallOffered) and offered.agent_interface == "PJSIP/agent1"
    assert offered.wait == pytest.approx(0.07)
    answered = changes[4]
    assert isinstance(answered, ch.CallAnswered) and answered.queue == "support"
    assert answered.wait == pytest.approx(4.02) and answered.ring == pytest.approx(3.98)
    pause = changes[10]
    assert isinstance(pause, ch.QueueMemberChanged)
    assert pause.paused and pause.pause_reason == "обед" and pause.in_call
    ended = changes[-1]
    assert isinstance(ended, ch.CallEnded)
    assert ended.reason == "hangup" and ended.cause == 16 and ended.cause_text == "Normal Clearing"
    assert ended.agent_interface == "PJSIP/agent1" and ended.queue == "support"
    assert ended.durations.wait == pytest.approx(4.02)
    assert ended.durations.ring == pytest.approx(3.98)
    assert ended.durations.hold == pytest.approx(3.0)
    assert ended.durations.talk == pytest.approx(30.05 - 6.05 - 3.0)
    assert not tracker.calls or list(tracker.calls) == ["9.9"]


def test_intermediate_states_and_queue_snapshot() -> None:
    data = FIXTURE.read_bytes()
    tracker = PbxTracker("lab")
    _replay(tracker, data, until=T0 + 3.0)
    snap = tracker.call_snapshot(f"lab:{U1}", T0 + 3.0)
    assert snap is not None and snap.state is ch.CallState.OFFERED
    q = tracker.queue_snapshot("support", T0 + 3.0)
    assert q is not None
    assert [(w.call_id, w.position) for w in q.waiting] == [(f"lab:{U1}", 1)]
    assert q.longest_wait == pytest.approx(1.0)
    (member,) = q.members
    assert member.interface == "PJSIP/agent1" and member.device_state == "RINGING"

    tracker = PbxTracker("lab")
    _replay(tracker, data, until=T0 + 11.0)
    snap = tracker.call_snapshot(f"lab:{U1}", T0 + 11.0)
    assert snap is not None and snap.state is ch.CallState.ON_HOLD
    assert snap.agent_interface == "PJSIP/agent1" and set(snap.legs) == {C, A}
    q = tracker.queue_snapshot("support", T0 + 11.0)
    assert q is not None and q.waiting == () and q.longest_wait == 0.0
    assert q.members[0].device_state == "INUSE" and q.members[0].in_call


def test_ids_are_namespaced_by_pbx() -> None:
    a, b = PbxTracker("pbx-a"), PbxTracker("pbx-b")
    e = _chan(ev.Newchannel, C, U1, U1)
    (sa,), (sb,) = a.apply(e, 1.0), b.apply(e, 1.0)
    assert isinstance(sa, ch.CallStarted) and isinstance(sb, ch.CallStarted)
    assert sa.call_id == f"pbx-a:{U1}" != sb.call_id


def test_abandon_and_positions_shift() -> None:
    t = PbxTracker("p")
    for i in (1, 2, 3):
        u = f"1.{i}"
        t.apply(_chan(ev.Newchannel, f"PJSIP/c-{i:08x}", u, u), 0.0)
        t.apply(_chan(ev.QueueCallerJoin, f"PJSIP/c-{i:08x}", u, u, queue="q", position=i), 1.0)
    out = t.apply(_chan(ev.QueueCallerAbandon, "PJSIP/c-00000001", "1.1", "1.1", queue="q",
                        position=1, original_position=1, hold_time=9), 10.0)
    assert [type(c) for c in out] == [ch.CallAbandoned]
    assert isinstance(out[0], ch.CallAbandoned) and out[0].wait == pytest.approx(9.0)
    t.apply(_chan(ev.QueueCallerLeave, "PJSIP/c-00000001", "1.1", "1.1", queue="q",
                  position=1), 10.0)
    q = t.queue_snapshot("q", 11.0)
    assert q is not None and [(w.channel, w.position) for w in q.waiting] == [
        ("PJSIP/c-00000002", 1), ("PJSIP/c-00000003", 2)]
    (end,) = t.apply(_chan(ev.Hangup, "PJSIP/c-00000001", "1.1", "1.1", cause=16), 10.5)
    assert isinstance(end, ch.CallEnded) and end.durations.wait == pytest.approx(9.0)
    assert end.durations.talk == 0.0


def test_ring_no_answer_withdraws_offer_and_requeues() -> None:
    t = PbxTracker("p")
    t.apply(_chan(ev.QueueCallerJoin, C, U1, U1, queue="q", position=1), 0.0)
    t.apply(_chan(ev.AgentCalled, C, U1, U1, queue="q", interface="PJSIP/agent1"), 1.0)
    out = t.apply(_chan(ev.AgentRingNoAnswer, C, U1, U1, queue="q", interface="PJSIP/agent1",
                        ring_time=15), 16.0)
    assert len(out) == 1 and isinstance(out[0], ch.CallOfferWithdrawn)
    assert out[0].reason == "no answer"
    snap = t.call_snapshot(f"p:{U1}", 16.0)
    assert snap is not None and snap.state is ch.CallState.QUEUED
    assert snap.durations.ring == pytest.approx(15.0)


def test_ringall_answer_withdraws_other_offers() -> None:
    t = PbxTracker("p")
    t.apply(_chan(ev.QueueCallerJoin, C, U1, U1, queue="q", position=1), 0.0)
    for agent in ("PJSIP/agent1", "PJSIP/agent2"):
        t.apply(_chan(ev.AgentCalled, C, U1, U1, queue="q", interface=agent), 1.0)
    out = t.apply(_chan(ev.AgentConnect, C, U1, U1, queue="q", interface="PJSIP/agent2"), 3.0)
    assert [type(c) for c in out] == [ch.CallOfferWithdrawn, ch.CallAnswered]
    assert isinstance(out[0], ch.CallOfferWithdrawn) and out[0].agent_interface == "PJSIP/agent1"
    assert out[0].reason == "answered elsewhere"


def test_direct_call_connects_on_two_party_bridge() -> None:
    t = PbxTracker("p")
    t.apply(_chan(ev.Newchannel, "PJSIP/agent1-00000001", "5.1", "5.1"), 0.0)
    t.apply(_chan(ev.Newchannel, "PJSIP/agent2-00000002", "5.2", "5.1"), 0.1)
    t.apply(_chan(ev.BridgeEnter, "PJSIP/agent2-00000002", "5.2", "5.1", bridge_num_channels=1),
            2.0)
    out = t.apply(_chan(ev.BridgeEnter, "PJSIP/agent1-00000001", "5.1", "5.1",
                        bridge_num_channels=2), 2.0)
    assert len(out) == 1 and isinstance(out[0], ch.CallAnswered)
    assert out[0].agent_interface == "PJSIP/agent2" and out[0].queue is None


def test_blind_and_attended_transfer() -> None:
    t = PbxTracker("p")
    t.apply(_chan(ev.QueueCallerJoin, C, U1, U1, queue="q", position=1), 0.0)
    t.apply(_chan(ev.Newchannel, A, U2, U1), 0.5)
    t.apply(_chan(ev.AgentCalled, C, U1, U1, queue="q", interface="PJSIP/agent1"), 0.5)
    t.apply(_chan(ev.AgentConnect, C, U1, U1, queue="q", interface="PJSIP/agent1"), 1.0)
    # agent1 consults agent2 (a call of its own), then completes the attended transfer
    t.apply(_chan(ev.Newchannel, "PJSIP/agent1-00000003", "7.3", "7.3"), 2.0)
    t.apply(_chan(ev.Newchannel, "PJSIP/agent2-00000004", "7.4", "7.3"), 2.0)
    out = t.apply(ev.AttendedTransfer(
        result="Success", orig_transferer_channel=A, orig_transferer_linkedid=U1,
        second_transferer_channel="PJSIP/agent1-00000003", second_transferer_linkedid="7.3",
        transferee_channel=C, transferee_linkedid=U1,
        transfer_target_channel="PJSIP/agent2-00000004", transfer_target_linkedid="7.3",
    ), 5.0)
    assert [type(c) for c in out] == [ch.CallTransferred]
    tr = out[0]
    assert isinstance(tr, ch.CallTransferred) and tr.kind == "attended"
    assert tr.target == "PJSIP/agent2" and tr.agent_interface == "PJSIP/agent1"
    out = t.apply(_chan(ev.Hangup, "PJSIP/agent1-00000003", "7.3", "7.3", cause=16), 5.1)
    assert [type(c) for c in out] == [ch.CallEnded]  # the consult call
    assert isinstance(out[0], ch.CallEnded) and out[0].call_id == "p:7.3"
    t.apply(_chan(ev.Hangup, A, U2, U1, cause=16), 5.1)
    snap = t.call_snapshot(f"p:{U1}", 6.0)
    assert snap is not None and snap.state is ch.CallState.CONNECTED
    assert snap.agent_interface == "PJSIP/agent2"
    assert set(snap.legs) == {C, "PJSIP/agent2-00000004"}
    out = t.apply(ev.BlindTransfer(result="Success", transferer_channel="PJSIP/agent2-00000004",
                                   transferee_channel=C, transferee_linkedid=U1,
                                   extension="200"), 7.0)
    assert len(out) == 1 and isinstance(out[0], ch.CallTransferred)
    assert out[0].kind == "blind" and out[0].target == "200"
    assert out[0].agent_interface == "PJSIP/agent2"


def test_resync_closes_lost_calls_once_and_adopts_new_ones() -> None:
    t = PbxTracker("p")
    t.apply(_chan(ev.Newchannel, C, U1, U1), 0.0)
    t.apply(_chan(ev.QueueCallerJoin, C, U1, U1, queue="q", position=1), 1.0)
    t.apply(_chan(ev.Newchannel, "PJSIP/keep-00000005", "3.1", "3.1"), 1.0)
    t.begin_resync()
    t.apply(_chan(ev.Newchannel, "PJSIP/fresh-00000006", "4.1", "4.1"), 2.0)  # during resync
    live = [
        ev.CoreShowChannel(channel="PJSIP/keep-00000005", uniqueid="3.1", linkedid="3.1",
                           state_desc="Up"),
        ev.CoreShowChannel(channel="PJSIP/new-00000007", uniqueid="8.1", linkedid="8.1",
                           state_desc="Up", bridge_id="b"),
        ev.CoreShowChannel(channel="PJSIP/agent1-00000008", uniqueid="8.2", linkedid="8.1",
                           state_desc="Up", bridge_id="b"),
        ev.CoreShowChannel(channel="PJSIP/waiting-00000009", uniqueid="9.1", linkedid="9.1",
                           state_desc="Up", application="Queue"),
    ]
    members = [ev.QueueMember(queue="q", location="PJSIP/agent1", status=2, in_call=1)]
    entries = [ev.QueueEntry(queue="q", position=1, channel="PJSIP/waiting-00000009",
                             uniqueid="9.1", wait=30)]
    out = t.finish_resync(live, members, entries, [ev.QueueParams(queue="q")], 100.0)
    ended = [c for c in out if isinstance(c, ch.CallEnded)]
    assert [(e.call_id, e.reason) for e in ended] == [(f"p:{U1}", OUTAGE_REASON)]
    assert OUTAGE_REASON == "ended during PBX outage"
    assert ended[0].queue == "q" and ended[0].durations.wait == pytest.approx(99.0)
    assert set(t.calls) == {"3.1", "4.1", "8.1", "9.1"}
    answered = [c for c in out if isinstance(c, ch.CallAnswered)]
    assert [(a.call_id, a.agent_interface) for a in answered] == [("p:8.1", "PJSIP/agent1")]
    q = t.queue_snapshot("q", 100.0)
    assert q is not None and [w.call_id for w in q.waiting] == ["p:9.1"]
    assert q.waiting[0].wait == pytest.approx(30.0)
    assert [m.device_state for m in q.members] == ["INUSE"]
    # a second resync with nothing alive closes the rest, each once
    t.begin_resync()
    out = t.finish_resync([], [], [], [], 200.0)
    assert sorted(c.call_id for c in out if isinstance(c, ch.CallEnded)) == [
        "p:3.1", "p:4.1", "p:8.1", "p:9.1"]
    t.begin_resync()
    assert [c for c in t.finish_resync([], [], [], [], 300.0) if isinstance(c, ch.CallEnded)] == []


def test_late_hangup_of_an_ended_call_is_ignored() -> None:
    t = PbxTracker("p")
    t.apply(_chan(ev.Newchannel, C, U1, U1), 0.0)
    assert len(t.apply(_chan(ev.Hangup, C, U1, U1, cause=16), 1.0)) == 1
    assert t.apply(_chan(ev.Hangup, C, U1, U1, cause=16), 1.0) == []


def test_member_removed_and_added() -> None:
    t = PbxTracker("p")
    (added,) = t.apply(ev.QueueMemberAdded(queue="q", interface="PJSIP/agent3", status=1), 0.0)
    assert isinstance(added, ch.QueueMemberChanged) and not added.removed
    assert added.device_state == "NOT_INUSE"
    (removed,) = t.apply(ev.QueueMemberRemoved(queue="q", interface="PJSIP/agent3"), 1.0)
    assert isinstance(removed, ch.QueueMemberChanged) and removed.removed
    q = t.queue_snapshot("q", 1.0)
    assert q is not None and q.members == ()


def test_device_of() -> None:
    assert device_of("PJSIP/agent1-0000002a") == "PJSIP/agent1"
    assert device_of("PJSIP/my-phone") == "PJSIP/my-phone"
    assert device_of("Local/100@agents-00000001;1") == "Local/100@agents-00000001;1"


def test_recorded_lab_transcript_replays_to_a_consistent_state() -> None:
    data = (FIXTURE.parent / "lab_queue_calls.txt").read_bytes()
    tracker = PbxTracker("lab")
    changes = _replay(tracker, data)
    started = [c for c in changes if isinstance(c, ch.CallStarted)]
    assert {c.caller_name for c in started} == {"Иван Петров", "Мария", "Abandoner"}
    answered = [c for c in changes if isinstance(c, ch.CallAnswered)]
    assert sorted(a.agent_interface for a in answered) == ["PJSIP/agent1", "PJSIP/agent2"]
    assert all(a.queue == "support" and a.ring > 1.0 for a in answered)
    (abandoned,) = [c for c in changes if isinstance(c, ch.CallAbandoned)]
    ended = {c.call_id: c for c in changes if isinstance(c, ch.CallEnded)}
    assert set(ended) == {c.call_id for c in started}
    assert all(e.reason == "hangup" for e in ended.values())
    assert ended[abandoned.call_id].agent_interface is None
    assert ended[abandoned.call_id].durations.wait > 0
    for a in answered:
        assert ended[a.call_id].durations.talk > 2.0
    assert tracker.calls == {}
    q = tracker.queue_snapshot("support", 0.0)
    assert q is not None and q.waiting == () and q.completed == 2 and q.abandoned == 1


@pytest.mark.parametrize("seed", range(20))
def test_shuffled_and_lossy_streams_never_crash_and_end_every_call_once(seed: int) -> None:
    rng = random.Random(seed)
    data = (FIXTURE.parent / "lab_queue_calls.txt").read_bytes()
    decoded = []
    for msg in AmiParser().messages(data):
        event = ev.decode_event(msg)
        if event is not None:
            decoded.append((event, ev.event_time(msg, 0.0)))
    stream = [d for d in decoded if rng.random() > 0.3]  # lose 30 % of the events
    for _ in range(len(stream) // 5):  # and swap some neighbours
        i = rng.randrange(len(stream) - 1)
        stream[i], stream[i + 1] = stream[i + 1], stream[i]
    tracker = PbxTracker("f")
    changes: list[ch.Change] = []
    for event, at in stream:
        changes += tracker.apply(event, at)
    tracker.begin_resync()
    changes += tracker.finish_resync([], [], [], [], 2e9)  # the PBX came back empty
    started = [c.call_id for c in changes if isinstance(c, ch.CallStarted)]
    ended = [c.call_id for c in changes if isinstance(c, ch.CallEnded)]
    assert sorted(started) == sorted(ended) and len(set(ended)) == len(ended)
    assert tracker.calls == {}
    assert all(c.durations.talk >= 0 and c.durations.wait >= 0
               for c in changes if isinstance(c, ch.CallEnded))
