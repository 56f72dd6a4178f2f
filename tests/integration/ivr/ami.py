"""A minimal asyncio AMI client for the IVR integration tests: send actions,
collect every event, wait for the first event matching a predicate."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

Message = dict[str, str]
MAX_MESSAGE = 64 * 1024


class AmiProbe:
    def __init__(self) -> None:
        self.events: list[Message] = []
        self._changed = asyncio.Condition()
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port and parts.username and parts.password
        self._reader, self._writer = await asyncio.open_connection(parts.hostname, parts.port)
        async with asyncio.timeout(10):
            await self._reader.readline()  # banner
        self._task = asyncio.create_task(self._read_loop())
        response = await self.action(
            {"Action": "Login", "Username": parts.username, "Secret": parts.password}
        )
        assert response.get("Response") == "Success", response

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def action(self, fields: Mapping[str, str], within: float = 15.0) -> Message:
        assert self._writer is not None
        action_id = f"ivr-test-{next(self._ids)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = future
        text = "".join(f"{k}: {v}\r\n" for k, v in {**fields, "ActionID": action_id}.items())
        self._writer.write(text.encode() + b"\r\n")
        await self._writer.drain()
        async with asyncio.timeout(within):
            return await future

    async def wait_event(self, match: Callable[[Message], bool], within: float = 30.0) -> Message:
        async with asyncio.timeout(within), self._changed:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                await self._changed.wait()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        buffer = bytearray()
        while True:
            chunk = await self._reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                raw = bytes(buffer[:end])
                del buffer[: end + 4]
                message: Message = {}
                for line in raw.decode("utf-8", errors="replace").split("\r\n"):
                    key, sep, value = line.partition(":")
                    if sep:
                        message.setdefault(key.strip(), value.strip())
                await self._dispatch(message)
            if len(buffer) > MAX_MESSAGE:
                raise RuntimeError("AMI message too large")

    async def _dispatch(self, message: Message) -> None:
        action_id = message.get("ActionID", "")
        if "Response" in message and action_id in self._pending:
            future = self._pending.pop(action_id)
            if not future.done():
                future.set_result(message)
            return
        if "Event" in message:
            async with self._changed:
                self.events.append(message)
                self._changed.notify_all()
