"""Fixtures: the PTY modem emulator (tests/modem_emulator) and a GsmModem driver on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sms_gateway.modem.driver import GsmModem, ModemConfig
from sms_gateway.modem.events import ModemEvent
from tests.modem_emulator import ModemEmulator

E = TypeVar("E")

FAST = {
    "command_timeout": 5.0,
    "prompt_timeout": 5.0,
    "reconnect_initial": 0.1,
    "reconnect_max": 0.5,
    "retry_backoff": 0.05,
    "health_interval": 60.0,
}


class EventLog:
    """Collects a driver's events; `wait_for` waits for a matching one (no fixed sleeps)."""

    def __init__(self, modem: GsmModem) -> None:
        self.events: list[ModemEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(modem))

    async def _collect(self, modem: GsmModem) -> None:
        async for event in modem.events():
            self.events.append(event)
            self._changed.set()

    async def wait_for(
        self,
        kind: type[E],
        where: Callable[[E], bool] = lambda _: True,
        *,
        since: int = 0,
        within: float = 20.0,
    ) -> E:
        """The first event of `kind` matching `where` among events number `since` onwards."""
        async with asyncio.timeout(within):
            while True:
                for event in self.events[since:]:
                    if isinstance(event, kind) and where(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def mark(self) -> int:
        return len(self.events)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    """Poll state owned by the emulator's thread (it has no asyncio event to await)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.fixture
def emulator_factory(tmp_path: Path) -> Iterator[Callable[..., ModemEmulator]]:
    started: list[ModemEmulator] = []

    def make(**kwargs: Any) -> ModemEmulator:
        emulator = ModemEmulator(tmp_path / f"ttyGSM{len(started)}", **kwargs)
        emulator.ussd_replies.setdefault("*100#", ("Баланс: 123.45 руб.", 72))
        started.append(emulator.start())
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., ModemEmulator]) -> ModemEmulator:
    return emulator_factory()


@pytest.fixture
async def modem_factory() -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[GsmModem, EventLog]] = []

    async def make(emulator: ModemEmulator, **overrides: Any) -> tuple[GsmModem, EventLog]:
        config = ModemConfig(name="gsm0", port=str(emulator.link), **{**FAST, **overrides})
        modem = GsmModem(config)
        log = EventLog(modem)
        await modem.start()
        running.append((modem, log))
        return modem, log

    yield make
    for modem, log in running:
        await modem.close()
        await log.close()


@pytest.fixture
async def online(
    emulator: ModemEmulator, modem_factory: Callable[..., Any]
) -> tuple[ModemEmulator, GsmModem, EventLog]:
    modem, log = await modem_factory(emulator)
    async with asyncio.timeout(20):
        await modem.wait_online()
    return emulator, modem, log
