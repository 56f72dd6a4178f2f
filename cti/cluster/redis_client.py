"""The Redis client every part of the server uses (``connect_redis``).

Theory of operation: redis-py (8.1) writes each command under
``asyncio.wait_for(drain(), socket_timeout)`` when a socket timeout is set.
On Python 3.11, ``wait_for`` loses a cancellation that arrives while the
write it waits on has just finished (CPython gh-86296, fixed in 3.12): the
command then returns normally in a task that was cancelled. Measured on a
local redis-server: 190 of 300 commands cancelled mid-flight came back as if
nothing happened. A lease loop cancelled that way never stops (a graceful
hand-over hung until the test timeout; the duty stayed on the stopping node).

:class:`CancelSafeConnection` writes under ``asyncio.timeout`` instead, which
re-raises the cancellation; reads already use ``asyncio.timeout`` in redis-py.
Everything else is redis-py's own connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_TIMEOUT = 2.0


class _CancelSafeWrite(AbstractConnection):
    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.socket_timeout:
            await super().send_packed_command(command, check_health)
            return
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        chunks = [command] if isinstance(command, bytes) else list(command)
        writer = self._writer
        if writer is None:
            raise RedisConnectionError("Error while writing to socket: not connected")
        try:
            async with asyncio.timeout(self.socket_timeout):
                writer.writelines(chunks)
                await writer.drain()
        except TimeoutError:  # before OSError: TimeoutError is one
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except asyncio.CancelledError:  # cancelled mid-write: the connection's state is unknown
            await self.disconnect(nowait=True)
            raise


class CancelSafeConnection(_CancelSafeWrite, Connection):
    pass


class CancelSafeSSLConnection(_CancelSafeWrite, SSLConnection):
    pass


class CancelSafeUnixConnection(_CancelSafeWrite, UnixDomainSocketConnection):
    pass


def _connection_class(url: str) -> type[AbstractConnection]:
    scheme = url.partition("://")[0].lower()
    if scheme == "rediss":
        return CancelSafeSSLConnection
    if scheme == "unix":
        return CancelSafeUnixConnection
    return CancelSafeConnection


def connect_redis(url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> aioredis.Redis:
    """A client for ``url`` with connect and socket timeouts whose cancellation is kept."""
    client: aioredis.Redis = aioredis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout,
        connection_class=_connection_class(url), **options,
    )
    return client
