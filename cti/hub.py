"""Fan-out of live events to agents' WebSockets.

Theory of operation: ``publish()`` gives the event the next global ``seq``,
encodes it to JSON ONCE, appends the text to each recipient agent's bounded
replay buffer and puts it on the bounded queue of each of that agent's
sockets. A socket whose queue is full is marked overflowed and dropped by its
handler (the client reconnects with its last seq and replays); it never slows
the others. An agent resuming with ``last_seq`` gets every buffered message
with a larger seq; if the buffer already evicted messages newer than
``last_seq`` the first message is ``{"type": "resync"}`` so the client reloads
its state over REST. ``epoch`` changes on every server start so a client can
tell that seq numbers restarted.

Besides that replayed stream, ``send_live()`` delivers a message (encoded
once) to the sockets a predicate selects, by kind of client or role, with no
seq and no replay: commands for a softphone (a replayed "answer" would be
wrong) and wallboard snapshots (a reconnecting wallboard fetches a fresh one).
These counts and deliveries are per node.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class _AgentBuffer:
    items: deque[tuple[int, str]]
    evicted_upto: int = 0


@dataclass(eq=False, slots=True)
class Subscription:
    agent_id: int
    queue: asyncio.Queue[str]
    overflowed: bool = False
    delivered: int = field(default=0)
    client: str = "desk"
    role: str = "agent"


class EventHub:
    def __init__(self, *, replay: int = 500, queue_size: int = 256) -> None:
        self.epoch = secrets.token_hex(6)
        self._seq = 0
        self._replay = replay
        self._queue_size = queue_size
        self._buffers: dict[int, _AgentBuffer] = {}
        self._subs: dict[int, set[Subscription]] = {}
        self.encoded = 0

    @property
    def seq(self) -> int:
        return self._seq

    def connected_agents(self) -> set[int]:
        return {agent for agent, subs in self._subs.items() if subs}

    def publish(self, agent_ids: Iterable[int], type_: str, body: dict[str, Any]) -> int:
        recipients = set(agent_ids)
        self._seq += 1
        seq = self._seq
        text = json.dumps({"seq": seq, "type": type_, **body}, ensure_ascii=False, default=str)
        self.encoded += 1
        for agent_id in recipients:
            buf = self._buffers.get(agent_id)
            if buf is None:
                buf = self._buffers[agent_id] = _AgentBuffer(deque())
            if len(buf.items) >= self._replay:
                buf.evicted_upto = buf.items.popleft()[0]
            buf.items.append((seq, text))
            for sub in self._subs.get(agent_id, ()):
                self._offer(sub, text)
        return seq

    @staticmethod
    def _offer(sub: Subscription, text: str) -> None:
        if sub.overflowed:
            return
        try:
            sub.queue.put_nowait(text)
        except asyncio.QueueFull:
            sub.overflowed = True

    def send_live(self, select: Callable[[Subscription], bool], type_: str,
                  body: dict[str, Any]) -> int:
        """Encode once, offer to every selected socket (no seq, no replay); returns how many."""
        chosen = [sub for subs in self._subs.values() for sub in subs if select(sub)]
        if not chosen:
            return 0
        text = json.dumps({"type": type_, **body}, ensure_ascii=False, default=str)
        self.encoded += 1
        for sub in chosen:
            self._offer(sub, text)
        return sum(1 for sub in chosen if not sub.overflowed)

    def any_socket(self, select: Callable[[Subscription], bool]) -> bool:
        return any(select(sub) for subs in self._subs.values() for sub in subs)

    def clients(self, agent_id: int, client: str) -> int:
        """How many of this agent's sockets on this node identified as ``client``."""
        return sum(1 for sub in self._subs.get(agent_id, ()) if sub.client == client)

    def subscribe(
        self, agent_id: int, last_seq: int | None, *, client: str = "desk", role: str = "agent"
    ) -> Subscription:
        sub = Subscription(
            agent_id, asyncio.Queue(self._queue_size + self._replay + 1), client=client, role=role
        )
        if last_seq is not None:
            buf = self._buffers.get(agent_id)
            if buf is not None:
                if last_seq < buf.evicted_upto:
                    sub.queue.put_nowait(
                        json.dumps({"type": "resync", "reason": "replay buffer exceeded"})
                    )
                for seq, text in buf.items:
                    if seq > last_seq:
                        sub.queue.put_nowait(text)
        self._subs.setdefault(agent_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.agent_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.agent_id]
