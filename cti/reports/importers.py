"""Asterisk's own records (queue_log, CDR Master.csv) imported into the history.

Theory of operation: calls that never reached the CTI (it was down, or the AMI
link was) still count in the reports once Asterisk's records are imported.
Each record becomes the same history event the live AMI path writes, with the
same ``dedup_key`` (``{pbx}:{linkedid}:queued:{queue}``, ``...:answered:{agent}``,
``...:abandoned``, ``...:ended``, ``...:deflected``): a call the CTI already
recorded is not counted twice, and importing a file again adds nothing (the
history writer inserts with ON CONFLICT DO NOTHING). The call id is
``{pbx}:{uniqueid}``: queue_log's callid and the CDR's uniqueid are the
caller channel's uniqueid, which is the call's Linkedid. A call the CTI never
saw gets a closed voice conversation (it is history, not work for the desk).
The parsers are pure functions with limits; the importer does the I/O.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update

from cti.history import HistoryEntry
from cti.identities import IdentityKind
from cti.models import Conversation, HistoryEvent
from cti.reports import kinds as K
from cti.services import Services

MAX_LINE = 4096
MAX_FIELDS = 12
MAX_FILE_LINES = 50_000_000
ANONYMOUS = {"", "anonymous", "unknown", "restricted", "<unknown>"}
UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class QueueLogRecord:
    at: float
    callid: str
    queue: str
    agent: str
    event: str
    data: tuple[str, ...]

    def datum(self, i: int) -> str:
        return self.data[i] if i < len(self.data) else ""


def parse_queue_log_line(line: str) -> QueueLogRecord | None:
    """``epoch|callid|queue|agent|EVENT|data1|data2|...``; None for lines to skip."""
    line = line.rstrip("\r\n")
    if not line or len(line) > MAX_LINE:
        return None
    parts = line.split("|", MAX_FIELDS)
    if len(parts) < 5:
        return None
    try:
        at = float(parts[0])
    except ValueError:
        return None
    callid, queue, agent, event = (p.strip() for p in parts[1:5])
    if not callid or callid == "NONE" or not event.isupper():
        return None
    return QueueLogRecord(at, callid[:150], queue[:64], agent[:128], event, tuple(parts[5:]))


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class CdrRecord:
    uniqueid: str
    src: str
    clid: str
    dst: str
    channel: str
    dstchannel: str
    lastapp: str
    lastdata: str
    start: datetime
    answer: datetime | None
    end: datetime
    duration: float
    billsec: float
    disposition: str


def _cdr_time(text: str, tz: ZoneInfo) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(UTC)
    except ValueError:
        return None


def parse_cdr_row(row: list[str], tz: ZoneInfo = UTC_ZONE) -> CdrRecord | None:
    """One cdr_csv Master.csv row (loguniqueid=yes: the uniqueid is the 17th column)."""
    if len(row) < 17 or any(len(cell) > MAX_LINE for cell in row):
        return None
    start, answer, end = (_cdr_time(row[i], tz) for i in (9, 10, 11))
    duration, billsec = _float(row[12]), _float(row[13])
    uniqueid = row[16].strip()
    if start is None or end is None or duration is None or billsec is None or not uniqueid:
        return None
    return CdrRecord(
        uniqueid=uniqueid[:150],
        src=row[1][:64],
        clid=row[4][:256],
        dst=row[2][:64],
        channel=row[5][:128],
        dstchannel=row[6][:128],
        lastapp=row[7][:64],
        lastdata=row[8][:256],
        start=start,
        answer=answer,
        end=end,
        duration=duration,
        billsec=billsec,
        disposition=row[14].strip().upper()[:32],
    )


def _interface(channel: str) -> str:
    """``PJSIP/agent1-0000000a`` -> ``PJSIP/agent1``."""
    base, _, suffix = channel.rpartition("-")
    return base if base and len(suffix) == 8 else channel


@dataclass
class ImportStats:
    lines: int = 0
    records: int = 0
    skipped: int = 0
    calls_created: int = 0
    events_new: int = 0
    unknown_calls: set[str] = field(default_factory=set)

    def json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "records": self.records,
            "skipped": self.skipped,
            "calls_created": self.calls_created,
            "events_new": self.events_new,
            "unknown_calls": len(self.unknown_calls),
        }


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        for n, line in enumerate(fh):
            if n >= MAX_FILE_LINES:
                raise ValueError(f"{path} has more than {MAX_FILE_LINES} lines")
            yield line


class AsteriskImporter:
    def __init__(self, services: Services, pbx: str) -> None:
        self._svc = services
        self._pbx = pbx

    def call_id(self, uniqueid: str) -> str:
        return f"{self._pbx}:{uniqueid}"

    async def _count(self) -> int:
        async with self._svc.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(HistoryEvent)) or 0)

    async def _conversation(
        self, call_id: str, number: str, queue: str | None, at: datetime, stats: ImportStats
    ) -> Conversation:
        conversations = self._svc.conversations
        found = await conversations.by_ref(call_id)
        if found is not None:
            return found
        customers = self._svc.customers
        if number.strip().lower() in ANONYMOUS:
            customer = await customers.new_anonymous("Anonymous caller")
        else:
            customer, _ = await customers.identify(IdentityKind.PHONE, number)
        conv, created = await conversations.open(
            "voice",
            customer.id,
            queue=queue,
            contact=number[:256],
            external_ref=call_id,
            queued_at=at,
        )
        if created:
            stats.calls_created += 1
            async with self._svc.sessions() as session, session.begin():
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conv.id)
                    .values(status="closed", closed_at=at)
                )
        return conv

    async def _add(
        self,
        conv: Conversation,
        call_id: str,
        kind: str,
        at: datetime,
        key: str,
        payload: dict[str, Any],
    ) -> None:
        await self._svc.history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind=kind,
                channel="voice",
                occurred_at=at,
                payload={"call_id": call_id, "source": "import", **payload},
                dedup_key=f"{call_id}:{key}"[:200],
            )
        )

    async def import_queue_log(self, lines: Iterable[str]) -> ImportStats:
        stats = ImportStats()
        before = await self._count()
        for line in lines:
            stats.lines += 1
            record = parse_queue_log_line(line)
            if record is None:
                stats.skipped += 1
                continue
            stats.records += 1
            await self._queue_log_record(record, stats)
        await self._svc.history.flush()
        stats.events_new = await self._count() - before
        return stats

    async def _queue_log_record(self, r: QueueLogRecord, stats: ImportStats) -> None:
        call_id = self.call_id(r.callid)
        at = datetime.fromtimestamp(r.at, UTC)
        if r.event == "ENTERQUEUE":
            conv = await self._conversation(call_id, r.datum(1), r.queue or None, at, stats)
            await self._add(
                conv,
                call_id,
                K.CALL_QUEUED,
                at,
                f"queued:{r.queue}",
                {"queue": r.queue, "position": _float(r.datum(2))},
            )
            return
        conv_or_none = await self._svc.conversations.by_ref(call_id)
        if conv_or_none is None:
            stats.unknown_calls.add(call_id)
            return
        conv = conv_or_none
        if r.event == "CONNECT":
            await self._answered(conv, call_id, at, r)
        elif r.event in ("COMPLETEAGENT", "COMPLETECALLER"):
            wait, talk = _float(r.datum(0)), _float(r.datum(1))
            await self._add(
                conv,
                call_id,
                K.CALL_ENDED,
                at,
                "ended",
                {
                    "queue": r.queue,
                    "agent_interface": r.agent,
                    "wait": wait,
                    "talk": talk,
                    "hold": 0.0,
                    "reason": r.event.lower(),
                },
            )
        elif r.event in ("ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY"):
            wait = _float(r.datum(2))
            await self._add(
                conv,
                call_id,
                K.CALL_ABANDONED,
                at,
                "abandoned",
                {"queue": r.queue, "wait": wait, "reason": r.event.lower()},
            )
            await self._add(
                conv,
                call_id,
                K.CALL_ENDED,
                at,
                "ended",
                {
                    "queue": r.queue,
                    "wait": wait,
                    "talk": 0.0,
                    "hold": 0.0,
                    "reason": r.event.lower(),
                },
            )
        elif r.event == "DEFLECTED":
            await self._add(
                conv,
                call_id,
                K.CALL_DEFLECTED,
                at,
                "deflected",
                {"queue": r.queue, "outcome": "deflected", "detail": r.datum(0)},
            )
        elif r.event == "CALLBACK":
            await self._add(
                conv,
                call_id,
                K.CALLBACK_BOOKED,
                at,
                "ql:callback",
                {"queue": r.queue, "detail": r.datum(0)},
            )
        else:
            stats.skipped += 1

    async def _answered(
        self, conv: Conversation, call_id: str, at: datetime, r: QueueLogRecord
    ) -> None:
        agent = await self._svc.agents.by_endpoint(r.agent)
        if agent is not None and conv.owner_id is None:
            async with self._svc.sessions() as session, session.begin():
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conv.id, Conversation.owner_id.is_(None))
                    .values(owner_id=agent.id)
                )
        await self._add(
            conv,
            call_id,
            K.CALL_ANSWERED,
            at,
            f"answered:{r.agent}",
            {
                "queue": r.queue,
                "agent_interface": r.agent,
                "agent": agent.login if agent else None,
                "wait": _float(r.datum(0)),
                "ring": _float(r.datum(2)),
            },
        )

    async def import_cdr(self, rows: Iterable[list[str]], tz: ZoneInfo) -> ImportStats:
        """Calls the queue_log does not know (no queue) count as calls, with their talk time."""
        stats = ImportStats()
        before = await self._count()
        for row in rows:
            stats.lines += 1
            record = parse_cdr_row(row, tz)
            if record is None:
                stats.skipped += 1
                continue
            stats.records += 1
            call_id = self.call_id(record.uniqueid)
            queue = record.lastdata.split(",")[0] if record.lastapp == "Queue" else None
            number = record.src or record.clid
            conv = await self._conversation(call_id, number, queue, record.start, stats)
            await self._add(
                conv,
                call_id,
                K.CALL_STARTED,
                record.start,
                "started",
                {"dialled": record.dst, "caller": number},
            )
            answered = record.disposition == "ANSWERED"
            await self._add(
                conv,
                call_id,
                K.CALL_ENDED,
                record.end,
                "ended",
                {
                    "queue": queue,
                    "agent_interface": _interface(record.dstchannel) if record.dstchannel else None,
                    "talk": record.billsec if answered and queue is None else 0.0,
                    "hold": 0.0,
                    "reason": record.disposition.lower(),
                },
            )
        await self._svc.history.flush()
        stats.events_new = await self._count() - before
        return stats


def queue_log_lines(path: Path) -> Iterator[str]:
    return _lines(path)


def cdr_rows(path: Path) -> Iterator[list[str]]:
    return csv.reader(_lines(path))
