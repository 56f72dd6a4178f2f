"""Shared pieces of the IVR lab tests: the FastAGI server on the lab's AGI
address with reference ports, an AMI probe, and waiting / pressing helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import pytest

from cti.lab import LabPbx
from ivr.flows import IvrConfig, default_routes
from ivr.ports import Customer, OrderState, OrderStatus, QueueStats
from ivr.reference_ports import MemoryPorts
from ivr.server import FastAgiServer, FastAgiSettings
from ivr.session import AgiSession
from tests.integration.ivr.ami import AmiProbe

CALLER = "79161234567"
WITHIN = 30.0
CONFIG = IvrConfig(digit_timeout=2.0, retries=1)


@dataclasses.dataclass
class IvrLab:
    pbx: LabPbx
    ami: AmiProbe
    server: FastAgiServer
    memory: MemoryPorts


@pytest.fixture
async def lab(lab_pbx: LabPbx) -> AsyncIterator[IvrLab]:
    memory = MemoryPorts()
    customer = Customer("cust-1", "Ivan Petrov", CALLER, "ru")
    memory.customers.by_phone[CALLER] = customer
    memory.customers.by_reference["4242"] = customer
    memory.orders.latest["cust-1"] = OrderStatus("1234", OrderState.SHIPPED)
    memory.queues.stats["support"] = QueueStats("support", waiting=2, agents_available=0,
                                                agents_logged_in=2, recent_aht=120.0)
    settings = FastAgiSettings(host=lab_pbx.agi_host, port=lab_pbx.agi_port,
                               allowed_hosts=frozenset({"127.0.0.1"}), shutdown_grace=2.0)
    server = FastAgiServer(settings, default_routes(CONFIG), memory.ports())
    ami = AmiProbe()
    await server.start()
    try:
        await ami.connect(lab_pbx.ami_url)
        yield IvrLab(lab_pbx, ami, server, memory)
    finally:
        await ami.close()
        await server.close()


async def wait_until(condition: Callable[[], bool], what: str, within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def session_at(lab: IvrLab, script: str, step: str) -> AgiSession:
    """The running session of ``script`` once it plays or reads at ``step``."""
    found: list[AgiSession] = []

    def ready() -> bool:
        for s in lab.server.sessions():
            if (s.environment.script == script and s.step == step
                    and s.pending_command in ("STREAM FILE", "GET DATA", "SAY DIGITS")):
                found[:] = [s]
                return True
        return False

    await wait_until(ready, f"{script} at {step}")
    return found[0]


async def press(lab: IvrLab, channel: str, digit: str, done: Callable[[], bool]) -> None:
    """Press ``digit`` (re-pressing if a press fell between two commands) until done."""
    for _ in range(8):
        response = await lab.ami.action({"Action": "PlayDTMF", "Channel": channel,
                                         "Digit": digit, "Duration": "250", "Receive": "true"})
        assert response.get("Response") == "Success", response
        try:
            await wait_until(done, f"the effect of pressing {digit}", within=4.0)
            return
        except AssertionError:
            continue
    raise AssertionError(f"pressing {digit} on {channel} had no effect")


def steps(memory: MemoryPorts) -> list[tuple[str, str]]:
    return [(c.step, c.value) for c in memory.history.choices]


def recorded(memory: MemoryPorts, step: str) -> Callable[[], bool]:
    return lambda: any(c.step == step for c in memory.history.choices)


async def call_in(lab: IvrLab, number: str = "100", caller: str = CALLER) -> None:
    response = await lab.ami.action({
        "Action": "Originate", "Channel": f"Local/{number}@from-trunk",
        "Application": "Wait", "Data": "120", "CallerID": f"Caller <{caller}>",
        "Async": "true",
    })
    assert response.get("Response") == "Success", response


async def key_in(lab: IvrLab, session: AgiSession, digits: str) -> None:
    """Key several digits into a GET DATA (each queued as received DTMF)."""
    await wait_until(lambda: session.pending_command == "GET DATA", "GET DATA")
    for digit in digits:
        response = await lab.ami.action({"Action": "PlayDTMF",
                                         "Channel": session.environment.channel,
                                         "Digit": digit, "Duration": "100", "Receive": "true"})
        assert response.get("Response") == "Success", response
