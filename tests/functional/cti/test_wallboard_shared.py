"""The queue snapshots a PBX's link holder shares with the other nodes (cti.wallboard)."""

from __future__ import annotations

import pytest

from cti.wallboard import decode_queues, encode_queues, queue_json
from pbx.state import MemberSnapshot, QueueSnapshot, WaitingCaller

QUEUE = QueueSnapshot(
    pbx="pbx1", name="sales",
    waiting=(WaitingCaller("c1", "PJSIP/trunk-1", 1, "+79160000001", "Иван", 1000.0, 12.5),),
    longest_wait=12.5,
    members=(MemberSnapshot("PJSIP/agent3", "agent3", "NOT_INUSE", True, "lunch", False, 4),),
    completed=7, abandoned=2,
)


def test_shared_queues_round_trip_with_waits_aged() -> None:
    raw = encode_queues([QUEUE], at=2000.0)
    [back] = decode_queues(raw.encode(), now=2003.0)
    assert back.waiting[0].wait == 15.5 and back.longest_wait == 15.5
    assert back.members == QUEUE.members and back.completed == 7 and back.abandoned == 2
    assert queue_json(back, {}, set())["members"][0] == {
        "interface": "PJSIP/agent3", "name": "agent3", "state": "paused", "reason": "lunch",
        "calls_taken": 4}
    [same] = decode_queues(raw, now=1990.0)  # a clock behind the writer's does not rewind
    assert same == QUEUE


@pytest.mark.parametrize("raw", ['{"at": 1}', '{"at": 1, "queues": [{"pbx": "p"}]}', "[]"])
def test_a_malformed_share_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        decode_queues(raw, now=0.0)
