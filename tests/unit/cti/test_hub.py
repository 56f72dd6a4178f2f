from __future__ import annotations

import json

from cti.hub import EventHub


def drain(sub) -> list[dict]:  # type: ignore[no-untyped-def]
    out = []
    while not sub.queue.empty():
        out.append(json.loads(sub.queue.get_nowait()))
    return out


async def test_publish_encodes_once_and_seq_grows() -> None:
    hub = EventHub(replay=10, queue_size=10)
    a1, a2 = hub.subscribe(1, None), hub.subscribe(2, None)
    a1b = hub.subscribe(1, None)
    s1 = hub.publish([1, 2], "screen_pop", {"x": 1})
    s2 = hub.publish([2], "note", {})
    assert s2 > s1 and hub.encoded == 2
    assert [m["seq"] for m in drain(a1)] == [s1]
    assert [m["seq"] for m in drain(a1b)] == [s1]
    assert [(m["seq"], m["type"]) for m in drain(a2)] == [(s1, "screen_pop"), (s2, "note")]


async def test_resume_replays_what_was_missed() -> None:
    hub = EventHub(replay=10, queue_size=10)
    seqs = [hub.publish([1], "e", {"n": n}) for n in range(5)]
    sub = hub.subscribe(1, seqs[1])
    assert [m["n"] for m in drain(sub)] == [2, 3, 4]
    assert drain(hub.subscribe(1, seqs[-1])) == []


async def test_resume_beyond_buffer_asks_for_resync() -> None:
    hub = EventHub(replay=3, queue_size=10)
    for n in range(6):
        hub.publish([1], "e", {"n": n})
    msgs = drain(hub.subscribe(1, 1))
    assert msgs[0]["type"] == "resync"
    assert [m["n"] for m in msgs[1:]] == [3, 4, 5]


async def test_slow_socket_overflows_alone() -> None:
    hub = EventHub(replay=5, queue_size=2)
    slow, fast = hub.subscribe(1, None), hub.subscribe(1, None)
    limit = slow.queue.maxsize
    for n in range(limit + 3):
        hub.publish([1], "e", {"n": n})
        drain(fast)
    assert slow.overflowed and not fast.overflowed
    assert slow.queue.qsize() == limit
    hub.unsubscribe(slow)
    hub.unsubscribe(fast)
    assert hub.connected_agents() == set()
