"""Per-link message rate of web chat: one token bucket per chat token, cluster-wide.

Theory of operation: with no Redis (one node) the bucket lives in this
process (:class:`TokenBucket`, an LRU of ``max_buckets``). In cluster mode
the bucket is a Redis hash (``tokens``, ``stamp``) updated by one Lua script,
atomically, with Redis's own clock (``TIME``), so every node charges the same
bucket and a customer who spreads frames over several nodes gets the rate of
one. The key holds a SHA-256 of the chat token (a token is a credential) and
expires once the bucket would be full again. When Redis cannot be reached the
limiter falls back to the local buckets (chat is never refused because Redis
is down: each node then allows the rate on its own), logs it once per outage
and reports it in health (``webchat`` link: ``shared: false``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY = "cti:chat:rate:{digest}"

# KEYS: bucket. ARGV: per_second, burst, ttl_ms -> wait in microseconds (0: pass, charged).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + (now - stamp) / 1000000 * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return wait
"""


@dataclass(slots=True)
class TokenBucket:
    tokens: float
    stamp: float

    def take(self, per_second: float, burst: int, now: float) -> float:
        """0 if a frame may pass (and charge it), else seconds until one may."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * per_second)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / per_second


class ChatRateLimiter:
    def __init__(self, per_second: float, burst: int, max_buckets: int = 10_000,
                 redis: Any = None) -> None:
        self.per_second = per_second
        self.burst = burst
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._redis = redis
        self._script: Any = redis.register_script(_TAKE) if redis is not None else None
        self.shared = redis is not None
        self.fallbacks = 0
        self.detail = "" if redis is not None else "single node: buckets in this process"

    async def take(self, token: str) -> float:
        """0 if this token's frame may pass (charged), else seconds until one may."""
        if self._script is not None:
            digest = hashlib.sha256(token.encode()).hexdigest()
            ttl_ms = int(self.burst / self.per_second * 1000) + 1000
            try:
                try:
                    wait = await self._script(keys=[KEY.format(digest=digest)],
                                              args=[self.per_second, self.burst, ttl_ms])
                except (ConnectionError, RedisConnectionError):
                    # A pooled connection closed by a Redis restart fails once.
                    wait = await self._script(keys=[KEY.format(digest=digest)],
                                              args=[self.per_second, self.burst, ttl_ms])
            except (RedisError, OSError) as exc:
                self.fallbacks += 1
                if self.shared:
                    log.warning("chat rate limits: Redis unreachable (%s); per-node buckets "
                                "until it is back", type(exc).__name__)
                self.shared = False
                self.detail = f"Redis unreachable ({type(exc).__name__}): per-node buckets"
            else:
                if not self.shared:
                    log.info("chat rate limits: shared in Redis again")
                self.shared, self.detail = True, ""
                return int(wait) / 1_000_000
        return self._take_local(token)

    def _take_local(self, token: str) -> float:
        now = time.monotonic()
        bucket = self._buckets.get(token)
        if bucket is None:
            bucket = self._buckets[token] = TokenBucket(float(self.burst), now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(token)
        return bucket.take(self.per_second, self.burst, now)

    def health(self) -> dict[str, Any]:
        """Up while the limits are what they should be: shared in cluster mode."""
        return {"kind": "webchat", "up": self.shared or self._redis is None,
                "rate_limits": "shared" if self.shared else "per_node",
                "fallbacks": self.fallbacks, "detail": self.detail}
