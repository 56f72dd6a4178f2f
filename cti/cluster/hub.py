"""The EventHub of a cluster node: publish through the bus, deliver what the bus brings.

``publish()`` does not deliver: it hands the event to :class:`EventBus`, which
gives it the cluster-wide seq; every node's bus reader then calls
``_deliver``, which runs the base class's delivery with that seq (the base
``publish`` takes the next seq after ``_seq``, so ``_seq`` is set to
``seq - 1`` first). Seq numbers are therefore the same on every node and an
agent resumes on any node with its last seq. ``epoch`` is the cluster's (kept
in Redis), so a desk that moves to another node keeps its seq.
``send_live`` (no seq, no replay) stays per node.

Live messages between nodes (no seq, no replay, no stream): ``request_live``
PUBLISHes ``{kind, node, id, ts, body}`` on one Redis Pub/Sub channel that
every node's ``_live_reader`` follows; the handler registered for ``kind``
(``on_live``) runs on each OTHER node and its reply (a small dict) is pushed
to a reply list that the asking node pops until every node that received the
message (PUBLISH's count, less itself) answered or ``within`` passed (``within=0``:
no replies are asked for or awaited). A node
that is not subscribed at that moment simply does not get it: this carries
commands that must not be replayed (softphone commands, chat pushes). Nothing
is queued while Redis is down: the caller gets ``None`` and falls back to this
node alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from cti.cluster.bus import BusEvent, EventBus
from cti.hub import EventHub

log = logging.getLogger(__name__)

EARLY_LIMIT = 10_000
LIVE_CHANNEL = "cti:live"
LIVE_REPLY_KEY = "cti:live:reply:{id}"
LIVE_MAX_AGE = 5.0  # a live message older than this (clock of the sender) is dropped
LIVE_MAX_MESSAGE = 256 * 1024
LIVE_POP_STEP = 1.0  # s: one BLPOP's wait, below the client's socket timeout (2 s)
LiveHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def _twice(command: Callable[[], Awaitable[Any]]) -> Any:
    """Run a Redis command; once more on a connection error (a pooled connection
    that Redis closed while it restarted fails on first use)."""
    try:
        return await command()
    except (ConnectionError, RedisConnectionError):
        return await command()


class ClusterHub(EventHub):
    def __init__(self, node_id: str, *, replay: int = 500, queue_size: int = 256) -> None:
        super().__init__(replay=replay, queue_size=queue_size)
        self.node_id = node_id
        self.bus: EventBus | None = None
        self._early: list[tuple[tuple[int, ...], str, dict[str, Any]]] = []
        self.on_delivered: list[Callable[[BusEvent], None]] = []  # metrics
        self._redis: Redis | None = None
        self._live_handlers: dict[str, LiveHandler] = {}
        self._live_task: asyncio.Task[None] | None = None
        self._live_reply_tasks: set[asyncio.Task[None]] = set()
        self.live_subscribed = False
        self.live_dropped = 0
        self.live_failures = 0  # consecutive request_live calls that found no Redis

    async def start(self, redis: Redis, **bus_options: Any) -> EventBus:
        self.bus = EventBus(redis, node_id=self.node_id, on_event=self._deliver, **bus_options)
        for agent_ids, type_, body in self._early:
            self.bus.publish(agent_ids, type_, body)
        self._early.clear()
        self._redis = redis
        self._live_task = asyncio.create_task(self._live_reader(), name=f"live-{self.node_id}")
        await self.bus.start()
        return self.bus

    async def stop(self) -> None:
        if self._live_task is not None:
            self._live_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._live_task
            self._live_task = None
        for task in list(self._live_reply_tasks):
            task.cancel()
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

    # -- live messages between nodes (Redis Pub/Sub) ---------------------------

    def on_live(self, kind: str, handler: LiveHandler) -> None:
        """Run ``handler(body)`` when another node sends ``kind``; its dict is the reply."""
        self._live_handlers[kind] = handler

    async def request_live(
        self, kind: str, body: dict[str, Any], within: float = 1.0,
        enough: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]] | None:
        """Send to every other node; the replies gathered within ``within`` s.

        ``None`` when Redis cannot be reached (the caller acts on this node alone).
        ``enough(replies)`` (optional) ends the wait early, e.g. as soon as the
        one node that can act has answered. Replies are popped in steps of at
        most ``LIVE_POP_STEP`` s, so ``within`` may exceed the Redis client's
        socket timeout (click-to-dial waits tens of seconds).
        """
        redis = self._redis
        if redis is None:
            return None
        message_id = uuid.uuid4().hex
        ack = within > 0
        text = json.dumps({"kind": kind, "node": self.node_id, "id": message_id, "ack": ack,
                           "ts": time.time(), "body": body}, ensure_ascii=False, default=str)
        reply_key = LIVE_REPLY_KEY.format(id=message_id)
        replies: list[dict[str, Any]] = []
        try:
            receivers = int(await _twice(lambda: redis.publish(LIVE_CHANNEL, text)))
            if not ack:
                return replies
            others = receivers - (1 if self.live_subscribed else 0)
            deadline = time.monotonic() + within
            while len(replies) < others:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                popped: Any = await redis.blpop([reply_key],
                                                timeout=max(0.01, min(left, LIVE_POP_STEP)))
                if popped is None:
                    continue  # this step passed; the deadline ends the wait
                with contextlib.suppress(ValueError, TypeError):
                    reply = json.loads(popped[1])
                    if isinstance(reply, dict):
                        replies.append(reply)
                if enough is not None and enough(replies):
                    break
            await redis.delete(reply_key)
        except (RedisError, OSError) as exc:
            self.live_failures += 1
            if self.live_failures == 1 or self.live_failures % 1000 == 0:
                log.warning("live %s: Redis unreachable (%s); this node only (%d times)", kind,
                            type(exc).__name__, self.live_failures)
            return None if not replies else replies
        self.live_failures = 0
        return replies

    async def _live_reader(self) -> None:
        backoff = 0.1
        while True:
            redis = self._redis
            assert redis is not None
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(LIVE_CHANNEL)
                self.live_subscribed = True
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_live_message(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.live_subscribed:
                    log.warning("live channel: Redis unreachable (%s)", type(exc).__name__)
                self.live_subscribed = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self.live_subscribed = False
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_live_message(self, raw: Any) -> None:
        if not isinstance(raw, (bytes, str)) or len(raw) > LIVE_MAX_MESSAGE:
            return
        try:
            data = json.loads(raw)
            kind, node, message_id = str(data["kind"]), str(data["node"]), str(data["id"])
            age = time.time() - float(data["ts"])
            body = data["body"]
            ack = data.get("ack", True) is not False
        except (ValueError, KeyError, TypeError):
            log.warning("live channel: a message that is not ours; skipped")
            return
        if node == self.node_id or not isinstance(body, dict):
            return
        handler = self._live_handlers.get(kind)
        if age > LIVE_MAX_AGE:
            self.live_dropped += 1
            log.warning("live %s from node %s dropped: %.1f s old", kind, node, age)
            handler = None
        task = asyncio.create_task(self._answer_live(handler, kind, message_id, body, ack))
        self._live_reply_tasks.add(task)
        task.add_done_callback(self._live_reply_tasks.discard)

    async def _answer_live(self, handler: LiveHandler | None, kind: str, message_id: str,
                           body: dict[str, Any], ack: bool = True) -> None:
        reply: dict[str, Any] | None = None
        if handler is not None:
            try:
                reply = await handler(body)
            except Exception:  # one bad handler must not stop the channel
                log.exception("live %s: the handler failed", kind)
        reply = {"node": self.node_id, **(reply or {})}
        redis = self._redis
        if redis is None or not ack:
            return
        key = LIVE_REPLY_KEY.format(id=message_id)
        try:
            encoded = json.dumps(reply, default=str)
            await _twice(lambda: redis.rpush(key, encoded))
            await redis.expire(key, 10)
        except (RedisError, OSError) as exc:
            log.warning("live %s: reply not sent (%s)", kind, type(exc).__name__)
