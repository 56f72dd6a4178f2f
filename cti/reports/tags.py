"""Tag marking by agents, and the tags report (agent marking vs automatic classifier).

A conversation's tags are its ``tags`` column (set by the desk, or by the
marking here). An agent marks a conversation (usually on close) with tags,
e.g. a promotion's name, and the customer's sentiment about it: each tag
becomes one ``marked`` history event and joins the conversation's tags; a later
marking of the same tag replaces the earlier one in the report. The automatic
column classifies everything the customer wrote in the conversation
(cti/reports/sentiment.py); a voice call has no text and counts as "no_text".
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cti.auth import Principal, Role
from cti.errors import Forbidden, InvalidInput, NotFound
from cti.history import HistoryEntry, HistoryWriter
from cti.models import Agent, Conversation, HistoryEvent
from cti.reports import kinds as K
from cti.reports.metrics import NONE_LABEL, Report, ReportOptions
from cti.reports.period import Period
from cti.reports.sentiment import classify

MAX_TAGS = 20
MAX_TAG_LEN = 64
MAX_CLASSIFIED = 20_000
MAX_TEXT_PER_CONVERSATION = 4096

h = HistoryEvent.__table__
conv = Conversation.__table__
agents = Agent.__table__


class Marking:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], history: HistoryWriter) -> None:
        self._sessions = sessions
        self._history = history

    async def mark(
        self,
        conversation_id: int,
        actor: Principal,
        tags: list[str],
        sentiment: str | None,
        *,
        at: datetime | None = None,
    ) -> list[str]:
        clean = sorted({t.strip() for t in tags if t.strip()})
        if not clean or len(clean) > MAX_TAGS or any(len(t) > MAX_TAG_LEN for t in clean):
            raise InvalidInput(
                f"give 1..{MAX_TAGS} tags of 1..{MAX_TAG_LEN} characters", field="tags"
            )
        if sentiment is not None and sentiment not in K.SENTIMENTS:
            raise InvalidInput("sentiment must be positive, negative or neutral", field="sentiment")
        async with self._sessions() as session, session.begin():
            found = await session.get(Conversation, conversation_id)
            if found is None:
                raise NotFound(
                    f"conversation {conversation_id} does not exist",
                    conversation_id=conversation_id,
                )
            if found.owner_id != actor.agent_id and not actor.at_least(Role.SUPERVISOR):
                raise Forbidden("this conversation belongs to another agent")
            merged = sorted(set(found.tags or []) | set(clean))
            await session.execute(
                update(Conversation).where(Conversation.id == conversation_id).values(tags=merged)
            )
            customer_id = found.customer_id
            channel = found.channel
        for tag in clean:
            entry = HistoryEntry(
                customer_id=customer_id,
                conversation_id=conversation_id,
                kind=K.MARKED,
                channel=channel,
                payload={"tag": tag, "sentiment": sentiment, "by": actor.agent_id},
            )
            if at is not None:
                entry = HistoryEntry(**{**_fields(entry), "occurred_at": at})
            await self._history.add(entry)
        return merged


def _fields(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "customer_id": entry.customer_id,
        "conversation_id": entry.conversation_id,
        "kind": entry.kind,
        "channel": entry.channel,
        "payload": entry.payload,
        "occurred_at": entry.occurred_at,
        "dedup_key": entry.dedup_key,
    }


async def tags_report(engine: AsyncEngine, period: Period, options: ReportOptions) -> Report:
    in_period = and_(conv.c.queued_at >= period.start, conv.c.queued_at < period.end)
    # A conversation's events do not precede its start (by more than the slack): the
    # bound lets PostgreSQL skip the monthly history partitions before the period.
    recent = h.c.occurred_at >= period.start - options.slack
    latest = (
        select(func.max(h.c.id).label("id"))
        .select_from(conv.join(h, h.c.conversation_id == conv.c.id))
        .where(in_period, recent, h.c.kind == K.MARKED)
        .group_by(h.c.conversation_id, h.c.payload["tag"].as_string())
        .subquery("latest")
    )
    tagged_q = (
        select(
            conv.c.id,
            conv.c.tags,
            conv.c.channel,
            conv.c.queue,
            agents.c.login,
            conv.c.queued_at,
        )
        .outerjoin(agents, agents.c.id == conv.c.owner_id)
        .where(in_period, cast(conv.c.tags, String) != "[]")
        .order_by(conv.c.id)
    )
    marks_q = (
        select(
            h.c.conversation_id,
            h.c.payload["tag"].as_string(),
            h.c.payload["sentiment"].as_string(),
        )
        .join(latest, latest.c.id == h.c.id)
        .join(conv, conv.c.id == h.c.conversation_id)
        .where(in_period, recent)
    )
    marked_convs = (
        select(conv.c.id.label("conversation_id"))
        .where(in_period, cast(conv.c.tags, String) != "[]")
        .limit(MAX_CLASSIFIED)
        .subquery("tagged_convs")
    )
    texts_q = (
        select(h.c.conversation_id, h.c.payload["text"].as_string())
        .join(marked_convs, marked_convs.c.conversation_id == h.c.conversation_id)
        .where(recent, h.c.kind.in_(K.INBOUND_TEXT))
        .order_by(h.c.conversation_id, h.c.occurred_at, h.c.id)
    )
    async with engine.connect() as db:
        tagged = (await db.execute(tagged_q)).all()
        marks = (await db.execute(marks_q)).all()
        texts = (await db.execute(texts_q)).all()
    written: dict[int, list[str]] = defaultdict(list)
    for cid, text in texts:
        if text and sum(map(len, written[cid])) < MAX_TEXT_PER_CONVERSATION:
            written[cid].append(text)
    auto = {cid: classify("\n".join(parts)).label for cid, parts in written.items()}
    group = period.group_by if period.group_by not in (None, "tag") else None
    counts: dict[tuple[str, str], dict[str, int]] = {}
    sentiment_of = {(cid, tag): sentiment for cid, tag, sentiment in marks}
    for cid, tags, channel, queue, login, queued_at in tagged:
        label = _group_label(group, channel, queue, login, queued_at, period)
        for tag in sorted(set(tags or [])):
            row = counts.setdefault((tag, label), dict.fromkeys(COUNT_COLUMNS, 0))
            row["conversations"] += 1
            sentiment = sentiment_of.get((cid, tag))
            row[f"agent_{sentiment}" if sentiment in K.SENTIMENTS else "agent_unmarked"] += 1
            row[f"auto_{auto[cid]}" if cid in auto else "auto_no_text"] += 1
    columns = ("tag", *((group,) if group else ()), *COUNT_COLUMNS)
    rows = [
        {"tag": tag, **({group: label} if group else {}), **values}
        for (tag, label), values in sorted(counts.items())
    ]
    totals: dict[str, Any] = {"tag": "all", **dict.fromkeys(COUNT_COLUMNS, 0)}
    for values in counts.values():
        for col in COUNT_COLUMNS:
            totals[col] += values[col]
    return Report("tags", period, columns, rows, totals, {"classifier": CLASSIFIER})


COUNT_COLUMNS = (
    "conversations",
    "agent_positive",
    "agent_negative",
    "agent_neutral",
    "agent_unmarked",
    "auto_positive",
    "auto_negative",
    "auto_neutral",
    "auto_no_text",
)
CLASSIFIER = "lexicon + negation over Snowball stems (cti/reports/sentiment.py), ru/en"


def _group_label(
    group: str | None,
    channel: str,
    queue: str | None,
    login: str | None,
    queued_at: datetime,
    period: Period,
) -> str:
    if group is None:
        return ""
    if group == "day":
        return queued_at.astimezone(period.tz).strftime("%Y-%m-%d")
    if group == "hour":
        return queued_at.astimezone(period.tz).strftime("%Y-%m-%d %H:00")
    value = {"channel": channel, "queue": queue, "agent": login}[group]
    return value or NONE_LABEL
