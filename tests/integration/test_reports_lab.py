"""Reports on the lab PBX through ``cti serve``'s build_app.

A SIPp caller reaches agent1's pjsua2 phone through the support queue and is
answered; a second caller waits while agent1 is paused and hangs up
(abandoned). The voice report over the test's own time window counts exactly
those two calls; then the lab's real queue_log file is imported twice: the two
calls are not counted again and the second import adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from cti.config import AmiServer, Settings
from cti.keys import SERVICES
from cti.lab import LabPbx
from cti.links.pbx import PBX_LINKS
from cti.reports.importers import AsteriskImporter, queue_log_lines
from cti.reports.metrics import ReportOptions, voice_report
from cti.reports.period import Period, parse_tz
from cti.serve import build_app
from cti.services import Services
from pbx.actions import PbxError
from pbx.link import AmiLink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUT = 40.0
AGENT = "PJSIP/agent1"
ANSWERED_NUMBER = "+79161230001"
ABANDONED_NUMBER = "+79161230002"


async def until(what: str, check: Callable[[], bool], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def member(link: AmiLink) -> Any:
    q = link.queue("support")
    return next((m for m in q.members if m.interface == AGENT), None) if q else None


@pytest.fixture
async def served(tmp_path: Path, lab_pbx: LabPbx) -> AsyncIterator[tuple[Services, AmiLink]]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'reports.sqlite3'}",
        data_dir=tmp_path,
        secret_key="reports-lab-secret",
        history_flush_interval=0.01,
        ami=(
            AmiServer("lab", lab_pbx.host, lab_pbx.ami_port, lab_pbx.ami_user, lab_pbx.ami_secret),
        ),
    )
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    link = app[PBX_LINKS]["lab"]
    try:
        await app[SERVICES].agents.create(
            "agent1", "agent1-password", name="Agent 1", endpoint=AGENT, queues=["support"]
        )
        await link.wait_up(TIMEOUT)
        await link.queue_pause(AGENT, False, "support")
        yield app[SERVICES], link
    finally:
        with contextlib.suppress(PbxError):
            await link.queue_pause(AGENT, False, "support")
        await server.close()


async def test_voice_report_counts_real_calls_and_queue_log_import_is_idempotent(
    served: tuple[Services, AmiLink], lab_pbx: LabPbx, phone_factory: Any, sipp_caller: Any
) -> None:
    services, link = served
    began = datetime.now(UTC) - timedelta(seconds=1)
    phone = await phone_factory("agent1")
    await until(
        "agent1 free in support",
        lambda: (m := member(link)) is not None and m.device_state == "NOT_INUSE" and not m.paused,
    )

    answered = sipp_caller(number="100", caller_number=ANSWERED_NUMBER, hangup_after=12)
    await phone.wait_for_incoming(TIMEOUT)
    await phone.answer()
    await phone.wait_state("connected", 15)
    result = await answered.wait_async(60)
    assert result.successful_calls == 1, result
    await until("the answered call gone", lambda: not link.calls())

    await link.queue_pause(AGENT, True, "support", "reports test")
    await until("agent1 paused", lambda: (m := member(link)) is not None and m.paused)
    abandoned = sipp_caller(number="100", caller_number=ABANDONED_NUMBER, hangup_after=6)
    result = await abandoned.wait_async(60)
    assert result.successful_calls == 1, result
    await until("the abandoned call gone", lambda: not link.calls())
    await link.queue_pause(AGENT, False, "support")

    for number in (ANSWERED_NUMBER, ABANDONED_NUMBER):
        assert await services.customers.lookup("phone", number) is not None, number

    period = Period(began, datetime.now(UTC) + timedelta(minutes=1), parse_tz("UTC"), "queue")
    options = ReportOptions()

    async def report() -> dict[str, Any]:
        await services.history.flush()
        return (await voice_report(services.engine, period, options)).totals

    deadline = time.monotonic() + TIMEOUT
    totals = await report()
    while totals["calls"] < 2 or totals["abandoned"] < 1:  # the last AMI events may lag
        assert time.monotonic() < deadline, totals
        totals = await report()
    assert {k: totals[k] for k in ("calls", "offered", "answered", "abandoned", "deflected")} == {
        "calls": 2,
        "offered": 2,
        "answered": 1,
        "abandoned": 1,
        "deflected": 0,
    }
    assert totals["asa"] is not None and 0 <= totals["asa"] < 20
    assert totals["avg_abandon_wait"] is not None and 2 <= totals["avg_abandon_wait"] <= 10
    assert totals["avg_talk"] is not None and 2 <= totals["avg_talk"] <= 12

    # Asterisk's queue_log for the same calls: written as they happen; wait for the ABANDON
    queue_log = lab_pbx.log_dir / "queue_log"
    await until(
        "the ABANDON line in queue_log",
        lambda: queue_log.exists() and "|ABANDON|" in queue_log.read_text(errors="replace"),
    )
    importer = AsteriskImporter(services, "lab")
    first = await importer.import_queue_log(queue_log_lines(queue_log))
    assert first.records > 0
    assert await report() == totals  # our two calls are not counted twice
    again = await importer.import_queue_log(queue_log_lines(queue_log))
    assert (again.records, again.calls_created, again.events_new) == (first.records, 0, 0)
    assert await report() == totals
