"""Fixtures for the pbx integration tests: an AmiLink to a lab PBX and a change recorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from pbx.changes import Change
from pbx.link import AmiLink, LinkSettings

C = TypeVar("C")

FAST = LinkSettings(ping_interval=1.0, ping_timeout=3.0, backoff_min=0.2, backoff_max=1.0,
                    auth_retry=1.0)


class Recorder:
    """Every change of a link, in order, with ``wait_for`` on a condition."""

    def __init__(self, link: AmiLink) -> None:
        self.link = link
        self.changes: list[Change] = []
        self._new = asyncio.Event()
        self._stream = link.changes()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for change in self._stream:
            self.changes.append(change)
            self._new.set()

    async def wait_for(self, kind: type[C], pred: Callable[[C], bool] = lambda c: True,
                       within: float = 30.0) -> C:
        seen = 0
        async with asyncio.timeout(within):
            while True:
                for change in self.changes[seen:]:
                    if isinstance(change, kind) and pred(change):
                        return change
                seen = len(self.changes)
                self._new.clear()
                await self._new.wait()

    def of(self, kind: type[C], pred: Callable[[C], bool] = lambda c: True) -> list[C]:
        return [c for c in self.changes if isinstance(c, kind) and pred(c)]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_until(pred: Callable[[], bool], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def lab_link(lab_pbx: Any) -> AsyncIterator[tuple[AmiLink, Recorder]]:
    link = AmiLink("lab", lab_pbx.ami_url, FAST)
    recorder = Recorder(link)
    await link.start()
    try:
        await link.wait_up(30)
        yield link, recorder
    finally:
        await link.stop()
        await recorder.close()
