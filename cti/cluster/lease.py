"""Leases in Redis: per duty (one Asterisk server's AMI link) exactly one holder.

Theory of operation (one :class:`Lease` per duty, ticking every ``renew_every``)::

    free/other's --acquire ok (Lua: key absent -> INCR fence, SET PX)--> held
    held --renew ok (Lua: value is ours -> PEXPIRE; absent -> SET again)--> held
    held --renew says another node's value is there--> lost (on_lose at once)
    held --Redis unreachable--> held (see below)

The value is ``<node>:<fencing token>``; the token comes from ``INCR`` so every
new holder has a larger one (shown in health and logs). ``on_acquire(token)``
starts the AMI link (which resyncs on connect); ``on_lose()`` stops it.
``eligible()`` (optional) says whether this node may hold the duty now (the
callback scheduler needs an AMI link of this node): a node that is not
eligible does not try, and a holder that stops being eligible releases.
The same class runs the other duties (``cti.cluster.duties``).

While Redis is unreachable the holder keeps its link: no other node can take
the lease either, unless Redis is reachable from them and not from us (a
partition). Then two nodes may briefly run the same AMI link. That is made
harmless rather than prevented: the holder cut off from Redis cannot publish
on the bus (no pops from it), and every write it makes is idempotent in the
shared database: history rows carry dedup keys derived from the PBX change
(``<call_id>:answered:<interface>``..., unique index, ON CONFLICT DO NOTHING)
and a call's conversation is keyed by its unique ``external_ref`` (the call
id). The fencing token therefore does not guard writes; it orders holders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_KEY = "cti:lease:{duty}"
FENCE_KEY = "cti:fence:{duty}"

# KEYS: lease, fence. ARGV: node, ttl_ms -> {1, token} acquired | {0, holder value}
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return {1, tostring(token)}
"""
# KEYS: lease. ARGV: our value, ttl_ms -> 1 still ours | 0 another node's
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class LeaseState:
    duty: str
    held: bool
    token: int | None
    holder: str | None
    detail: str


class Lease:
    def __init__(
        self,
        redis: Redis,
        duty: str,
        node_id: str,
        *,
        on_acquire: Callable[[int], Awaitable[None]],
        on_lose: Callable[[], Awaitable[None]],
        ttl: float = 5.0,
        renew_every: float = 1.0,
        eligible: Callable[[], bool] | None = None,
    ) -> None:
        if not 0 < renew_every < ttl:
            raise ValueError("renew_every must be positive and shorter than ttl")
        self._redis = redis
        self.duty = duty
        self.node_id = node_id
        self._on_acquire = on_acquire
        self._on_lose = on_lose
        self._ttl_ms = int(ttl * 1000)
        self._every = renew_every
        self._eligible = eligible
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.token: int | None = None
        self.holder: str | None = None
        self.detail = "not started"
        self.acquired = 0
        self.lost = 0

    @property
    def held(self) -> bool:
        return self.token is not None

    def _value(self) -> str:
        return f"{self.node_id}:{self.token}"

    def state(self) -> LeaseState:
        return LeaseState(self.duty, self.held, self.token, self.holder, self.detail)

    async def tick(self) -> None:
        """One acquire-or-renew step (errors from Redis are reported, not raised)."""
        try:
            if self._eligible is not None and not self._eligible():
                if self.token is not None:  # e.g. the AMI link it needs went elsewhere
                    await self.release()
                value = await self._redis.get(LEASE_KEY.format(duty=self.duty))
                self.holder = _text(value).rpartition(":")[0] if value else None
                self.detail = "not eligible on this node"
                return
            if self.token is None:
                reply: Any = await self._acquire(
                    keys=[LEASE_KEY.format(duty=self.duty), FENCE_KEY.format(duty=self.duty)],
                    args=[self.node_id, self._ttl_ms],
                )
                ok, value = int(reply[0]), _text(reply[1])
                if not ok:
                    self.holder, self.detail = value.rpartition(":")[0], ""
                    return
                self.token, self.holder, self.detail = int(value), self.node_id, ""
                self.acquired += 1
                log.info("lease %s acquired by %s (token %s)", self.duty, self.node_id, value)
                try:
                    await self._on_acquire(self.token)
                except Exception:  # could not take up the duty: let another node have it
                    log.exception("lease %s: starting the duty failed; releasing", self.duty)
                    await self.release()
            else:
                still: Any = await self._renew(
                    keys=[LEASE_KEY.format(duty=self.duty)], args=[self._value(), self._ttl_ms]
                )
                self.detail = ""
                if not int(still):
                    await self._lose("another node holds it now")
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            self.detail = f"Redis unreachable: {type(exc).__name__}: {exc}"[:300]

    async def _lose(self, why: str) -> None:
        log.warning("lease %s lost by %s (token %s): %s", self.duty, self.node_id, self.token, why)
        self.token, self.holder = None, None
        self.lost += 1
        await self._on_lose()

    async def run(self) -> None:
        task = asyncio.current_task()
        while True:
            await self.tick()
            if task is not None and task.cancelling():
                # A library swallowed our cancellation mid-command (redis-py under
                # Python 3.11's wait_for did; see cti.cluster.redis_client): stop anyway.
                raise asyncio.CancelledError
            await asyncio.sleep(self._every)

    async def release(self) -> None:
        """Give the lease up (graceful stop) so another node takes over at once."""
        if self.token is None:
            return
        value = self._value()
        self.token, self.holder = None, None
        await self._on_lose()
        try:
            await self._release(keys=[LEASE_KEY.format(duty=self.duty)], args=[value])
        except (RedisError, OSError) as exc:
            log.warning("lease %s: release failed (%s); it expires by itself", self.duty, exc)


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
