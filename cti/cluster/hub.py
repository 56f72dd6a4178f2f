"""The EventHub of a cluster node: publish through the bus, deliver what the bus brings.

``publish()`` does not deliver: it hands the event to :class:`EventBus`, which
gives it the cluster-wide seq; every node's bus reader then calls
``_deliver``, which runs the base class's delivery with that seq (the base
``publish`` takes the next seq after ``_seq``, so ``_seq`` is set to
``seq - 1`` first). Seq numbers are therefore the same on every node and an
agent resumes on any node with its last seq. ``epoch`` is the cluster's (kept
in Redis), so a desk that moves to another node keeps its seq.
``send_live`` (no seq, no replay) stays per node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from cti.cluster.bus import BusEvent, EventBus
from cti.hub import EventHub

EARLY_LIMIT = 10_000


class ClusterHub(EventHub):
    def __init__(self, node_id: str, *, replay: int = 500, queue_size: int = 256) -> None:
        super().__init__(replay=replay, queue_size=queue_size)
        self.node_id = node_id
        self.bus: EventBus | None = None
        self._early: list[tuple[tuple[int, ...], str, dict[str, Any]]] = []
        self.on_delivered: list[Callable[[BusEvent], None]] = []  # metrics

    async def start(self, redis: Redis, **bus_options: Any) -> EventBus:
        self.bus = EventBus(redis, node_id=self.node_id, on_event=self._deliver, **bus_options)
        for agent_ids, type_, body in self._early:
            self.bus.publish(agent_ids, type_, body)
        self._early.clear()
        await self.bus.start()
        return self.bus

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()

    @property
    def epoch(self) -> str:
        return self.bus.epoch if self.bus is not None else self._local_epoch

    @epoch.setter
    def epoch(self, value: str) -> None:
        self._local_epoch = value

    def publish(self, agent_ids: Iterable[int], type_: str, body: dict[str, Any]) -> int:
        """Queue for the bus; returns 0 (the seq is given by Redis, delivered later)."""
        if self.bus is None:
            if len(self._early) < EARLY_LIMIT:
                self._early.append((tuple(agent_ids), type_, body))
            return 0
        self.bus.publish(agent_ids, type_, body)
        return 0

    def _deliver(self, event: BusEvent) -> None:
        self._seq = event.seq - 1
        super().publish(event.agent_ids, event.type, event.body)
        for hook in self.on_delivered:
            hook(event)
