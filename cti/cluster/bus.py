"""The event bus between server nodes: one Redis Stream that every node reads.

Theory of operation
-------------------
``publish()`` is synchronous (the hub's callers are): it appends the event to
a bounded local outbox and wakes the writer. The writer sends the outbox in
batches to one Lua script that, atomically, gives each event the next
cluster-wide ``seq`` (``INCR``) and appends it to the stream with the entry id
``<seq>-0`` (``XADD ... MAXLEN ~ maxlen``), so stream order IS seq order. The
floor passed to the script (the highest seq this node has seen, and the stream
top) keeps seq increasing even if Redis came back empty.

Every node, the publisher included, runs one reader: ``XREAD BLOCK`` from its
own last id (not a consumer group: every node needs every event) and hands each
event to ``on_event`` in seq order. A node starting (or restarting) replays the
retained tail first (from its last id saved in Redis when that is within
``backfill`` events, else the last ``backfill`` events), so an agent that
reconnects to ANY node can resume by ``seq`` from that node's replay buffers.

While Redis is down, the outbox keeps the events (up to ``outbox_limit``; the
oldest are dropped beyond it, counted in ``dropped``) and the writer retries
with a backoff; nothing is delivered locally until it has a seq. A batch whose
reply was lost may be written twice on retry: each event carries a unique id
(``<node>:<counter>``) and readers drop an id they have already seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STREAM = "cti:bus:events"
SEQ_KEY = "cti:bus:seq"
EPOCH_KEY = "cti:bus:epoch"
NODE_LAST_KEY = "cti:bus:node:{node}:last"
MAX_AGENTS = 10_000
MAX_TYPE = 64
MAX_MESSAGE = 1024 * 1024

# KEYS: stream, seq counter. ARGV: floor, maxlen, message... -> list of seqs.
_PUBLISH = """
local floor = tonumber(ARGV[1])
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  local t = tonumber(string.match(top[1][1], '^(%d+)'))
  if t > floor then floor = t end
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < floor then redis.call('SET', KEYS[2], floor) end
local out = {}
for i = 3, #ARGV do
  local seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'm', ARGV[i])
  out[#out + 1] = seq
end
return out
"""


@dataclass(frozen=True, slots=True)
class BusEvent:
    seq: int
    agent_ids: tuple[int, ...]
    type: str
    body: dict[str, Any]
    published_at: float
    event_id: str


@dataclass(frozen=True, slots=True)
class BusStats:
    up: bool
    last_seq: int
    pending: int
    published: int
    consumed: int
    dropped: int
    duplicates: int
    lag_ms: float | None
    detail: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(entry_id: bytes | str, fields: dict[Any, Any]) -> BusEvent | None:
    """A stream entry -> BusEvent; None for an entry that is not ours (pure)."""
    raw_id = _text(entry_id)
    seq_text, _, _ = raw_id.partition("-")
    raw = fields.get(b"m", fields.get("m"))
    if raw is None or not seq_text.isdigit() or len(raw) > MAX_MESSAGE:
        return None
    try:
        data = json.loads(raw)
        agents = tuple(int(a) for a in data["a"][:MAX_AGENTS])
        type_ = str(data["t"])[:MAX_TYPE]
        body = data["b"]
        if not isinstance(body, dict):
            return None
        return BusEvent(int(seq_text), agents, type_, body, float(data["ts"]), str(data["id"]))
    except (ValueError, KeyError, TypeError):
        return None


class EventBus:
    def __init__(
        self,
        redis: Redis,
        *,
        node_id: str,
        on_event: Callable[[BusEvent], None],
        maxlen: int = 100_000,
        backfill: int = 10_000,
        outbox_limit: int = 100_000,
        batch: int = 500,
        block_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self._on_event = on_event
        self._maxlen = maxlen
        self._backfill = backfill
        self._outbox: deque[str] = deque()
        self._outbox_limit = outbox_limit
        self._batch = batch
        self._block_ms = block_ms
        self._wake = asyncio.Event()
        self._stopping = False
        self._up_event = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._script = redis.register_script(_PUBLISH)
        self._counter = 0
        self._seen: deque[str] = deque()
        self._seen_set: set[str] = set()
        self.epoch = secrets.token_hex(6)
        self.last_seq = 0
        self.published = 0
        self.consumed = 0
        self.dropped = 0
        self.duplicates = 0
        self.up = False
        self.detail = "not started"
        self._lag_ms: float | None = None
        self._last_saved = 0

    # -- publishing -------------------------------------------------------

    def publish(self, agent_ids: Iterable[int], type_: str, body: dict[str, Any]) -> None:
        self._counter += 1
        message = json.dumps(
            {
                "id": f"{self.node_id}:{self._counter}",
                "ts": time.time(),
                "a": sorted(set(agent_ids)),
                "t": type_,
                "b": body,
            },
            ensure_ascii=False,
            default=str,
        )
        if len(self._outbox) >= self._outbox_limit:
            self._outbox.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("bus outbox full (%d): %d events dropped", self._outbox_limit,
                            self.dropped)
        self._outbox.append(message)
        self._drained.clear()
        self._wake.set()

    async def _writer(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox[i] for i in range(min(self._batch, len(self._outbox)))]
                try:
                    await self._script(
                        keys=[STREAM, SEQ_KEY], args=[self.last_seq, self._maxlen, *batch]
                    )
                except asyncio.CancelledError:
                    raise
                except (RedisError, OSError) as exc:
                    self._down(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                for _ in batch:
                    self._outbox.popleft()
                self.published += len(batch)
            self._drained.set()

    # -- consuming --------------------------------------------------------

    async def _start_id(self) -> str:
        top: Any = await self._redis.xrevrange(STREAM, "+", "-", count=1)
        if not top:
            return "0-0"
        top_seq = int(_text(top[0][0]).partition("-")[0])
        saved: Any = await self._redis.get(NODE_LAST_KEY.format(node=self.node_id))
        floor = max(0, top_seq - self._backfill)
        if saved is not None and int(saved) >= floor:
            return f"{int(saved)}-0"
        return f"{floor}-0"

    async def _reader(self) -> None:
        last_id: str | None = None
        backoff = 0.1
        while not self._stopping:
            try:
                if last_id is None:
                    last_id = await self._start_id()
                    await self._redis.set(EPOCH_KEY, self.epoch, nx=True)
                    epoch: Any = await self._redis.get(EPOCH_KEY)
                    if epoch is not None:
                        self.epoch = _text(epoch)
                reply: Any = await self._redis.xread(
                    {STREAM: last_id}, count=self._batch, block=self._block_ms
                )
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if not self.up:
                self.up, self.detail = True, ""
                self._up_event.set()
                self._wake.set()  # flush what was buffered while Redis was down
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    last_id = _text(entry_id)
                    self._consume(entry_id, fields)
            await self._save_last()

    def _consume(self, entry_id: bytes | str, fields: dict[Any, Any]) -> None:
        event = decode_entry(entry_id, fields)
        if event is None:
            log.warning("bus: entry %r is not a CTI event; skipped", entry_id)
            return
        if event.seq <= self.last_seq:
            return
        self.last_seq = event.seq
        if event.event_id in self._seen_set:
            self.duplicates += 1
            return
        self._seen.append(event.event_id)
        self._seen_set.add(event.event_id)
        if len(self._seen) > self._backfill:
            self._seen_set.discard(self._seen.popleft())
        self.consumed += 1
        self._lag_ms = max(0.0, (time.time() - event.published_at) * 1000.0)
        try:
            self._on_event(event)
        except Exception:  # one bad delivery must not stop the bus
            log.exception("bus: delivering seq %d (%s) failed", event.seq, event.type)

    async def _save_last(self) -> None:
        if self.last_seq - self._last_saved >= 1:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.set(NODE_LAST_KEY.format(node=self.node_id), self.last_seq)
                self._last_saved = self.last_seq

    def _down(self, exc: BaseException) -> None:
        if self.up or self.detail == "not started":
            log.warning("bus: Redis unreachable (%s: %s)", type(exc).__name__, exc)
        self.up = False
        self._up_event.clear()
        self.detail = f"{type(exc).__name__}: {exc}"[:300]

    # -- lifecycle --------------------------------------------------------

    async def start(self, within: float = 5.0) -> None:
        """Start reading and writing; wait (bounded) until the first read succeeded."""
        for coro, name in ((self._reader(), "bus-reader"), (self._writer(), "bus-writer")):
            task = asyncio.create_task(coro, name=f"{name}-{self.node_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._up_event.wait()

    async def stop(self, flush_within: float = 2.0) -> None:
        if self.up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_within):
                    await self._drained.wait()
        # redis-py can hang when a blocking XREAD is cancelled: let the reader
        # see the flag when its XREAD returns (<= block_ms), cancel only then.
        self._stopping = True
        reader = [t for t in self._tasks if t.get_name().startswith("bus-reader")]
        if reader:
            await asyncio.wait(reader, timeout=self._block_ms / 1000.0 + 3.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.wait(list(self._tasks), timeout=5.0)

    def stats(self) -> BusStats:
        return BusStats(
            up=self.up,
            last_seq=self.last_seq,
            pending=len(self._outbox),
            published=self.published,
            consumed=self.consumed,
            dropped=self.dropped,
            duplicates=self.duplicates,
            lag_ms=self._lag_ms,
            detail=self.detail,
        )
