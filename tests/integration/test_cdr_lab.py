"""CDR import from the lab PBX's own cdr_csv Master.csv, with the CTI down.

A SIPp caller dials the support queue while no CTI is running (the IVR's AGI
fails, the call still queues) and hangs up. Asterisk's cdr_csv (modules.conf,
cdr.conf: usegmtime, loguniqueid) writes the record; ``cti reports import-cdr``
imports it into an empty store: the call counts in the voice report with the
CSV's own times, queue and caller; a second import adds nothing.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cti.db import create_engine
from cti.lab import LabPbx
from cti.models import Conversation, Customer, HistoryEvent, Identity
from cti.reports.metrics import ReportOptions, voice_report
from cti.reports.period import Period, parse_tz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NUMBER = "+79161239901"


def import_cdr(master: Path, db_url: str, tmp_path: Path) -> dict[str, Any]:
    env = {**os.environ, "CTI_DB_URL": db_url, "CTI_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "cti", "reports", "import-cdr", str(master), "--pbx", "lab"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stats: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return stats


def our_rows(master: Path) -> list[list[str]]:
    if not master.exists():
        return []
    with master.open(newline="", encoding="utf-8", errors="replace") as f:
        return [row for row in csv.reader(f) if len(row) >= 17 and row[1] == NUMBER]


async def test_lab_cdr_csv_import_counts_the_call_and_is_idempotent(
    lab_pbx: LabPbx, sipp_caller: Any, tmp_path: Path
) -> None:
    began = datetime.now(UTC) - timedelta(seconds=1)
    caller = sipp_caller(number="100", caller_number=NUMBER, hangup_after=2)
    result = await caller.wait_async(60)
    assert result.successful_calls == 1, result

    master = lab_pbx.log_dir / "cdr-csv" / "Master.csv"
    deadline = time.monotonic() + 30
    while not our_rows(master):
        assert time.monotonic() < deadline, f"no CDR for {NUMBER} in {master}"
        await asyncio.sleep(0.1)
    (row,) = our_rows(master)
    # accountcode,src,dst,dcontext,clid,channel,dstchannel,lastapp,lastdata,start,answer,end,
    # duration,billsec,disposition,amaflags,uniqueid
    assert (row[3], row[14], row[7]) == ("cti-inbound", "ANSWERED", "Queue"), row
    uniqueid = row[16]
    start = datetime.fromisoformat(row[9]).replace(tzinfo=UTC)  # usegmtime = yes
    end = datetime.fromisoformat(row[11]).replace(tzinfo=UTC)
    assert began <= start <= end <= datetime.now(UTC)

    # Only this call's lines, as Asterisk wrote them: the shared lab PBX's
    # Master.csv also holds other tests' calls, one of which may fall in the period.
    lines = master.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    master = tmp_path / "Master.csv"
    master.write_text("".join(line for line in lines if f'"{NUMBER}"' in line), encoding="utf-8")
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cdr.sqlite3'}"
    first = import_cdr(master, db_url, tmp_path)
    assert first["records"] >= 1 and first["calls_created"] >= 1, first

    engine = create_engine(db_url)
    try:
        async with engine.connect() as db:
            conv = (
                await db.execute(
                    select(Conversation).where(Conversation.external_ref == f"lab:{uniqueid}")
                )
            ).one()
            events = (
                await db.execute(
                    select(HistoryEvent.kind, HistoryEvent.occurred_at, HistoryEvent.talk_s)
                    .where(HistoryEvent.conversation_id == conv.id)
                    .order_by(HistoryEvent.id)
                )
            ).all()
            number = (
                (
                    await db.execute(
                        select(Identity.value)
                        .join(Customer, Customer.id == Identity.customer_id)
                        .where(Customer.id == conv.customer_id)
                    )
                )
                .scalars()
                .all()
            )
        assert (conv.channel, conv.queued_at, conv.status) == ("voice", start, "closed")
        assert conv.queue == "support"  # Queue(support,...) was the last application
        assert NUMBER.lstrip("+") in "".join(number), number
        assert [(k, t) for k, t, _ in events] == [("call_started", start), ("call_ended", end)]
        assert events[1][2] == 0.0  # a queue call's talk time comes from the queue_log

        period = Period(began, datetime.now(UTC) + timedelta(minutes=1), parse_tz("UTC"), None)

        async def totals() -> dict[str, Any]:
            return (await voice_report(engine, period, ReportOptions())).totals

        before = await totals()
        assert {k: before[k] for k in ("calls", "offered", "answered", "abandoned")} == {
            "calls": 1,
            "offered": 0,  # the CDR has no queue entry: that comes from the queue_log
            "answered": 0,
            "abandoned": 0,
        }
        again = import_cdr(master, db_url, tmp_path)
        assert (again["records"], again["calls_created"], again["events_new"]) == (
            first["records"],
            0,
            0,
        )
        assert await totals() == before
    finally:
        await engine.dispose()
