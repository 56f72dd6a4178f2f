"""Voice, text, FCR, tag and agent reports, computed in SQL from the history store.

Theory of operation: each report first folds the history events of one
conversation into one "fact" row (a GROUP BY conversation_id with conditional
aggregates: answered or not, the wait, talk, hold, the first inbound and
outbound message...), joins the conversation (queue, owner, start time), and
then aggregates the facts per group in SQL. Day and hour groups are local to
the report's time zone: SQL groups by 15-minute UTC buckets (every zone's UTC
offset is a multiple of 15 minutes) and Python merges the buckets into local
days or hours, so DST and odd offsets are exact on SQLite and PostgreSQL alike.
Every measure is a sum or a max, so merging buckets is exact too. A contact
belongs to the period in which it started (the conversation's ``queued_at``);
its events are read up to ``slack`` after the end of the period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Float,
    and_,
    case,
    func,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import ColumnElement

from cti.models import Agent, Conversation, HistoryEvent
from cti.reports import kinds as K
from cti.reports.period import Period
from cti.reports.sql import bucket, epoch

BUCKET = 900  # seconds; see the theory of operation
NONE_LABEL = "(none)"
MAX_REPEATS = 1000
MAX_REPEAT_ROWS = 500_000


@dataclass(frozen=True, slots=True)
class ReportOptions:
    service_level: float = 20.0
    service_level_by_queue: Mapping[str, float] = field(default_factory=dict)
    first_response_sla: Mapping[str, float] = field(
        default_factory=lambda: {"chat": 60.0, "sms": 900.0, "social": 3600.0}
    )
    fcr_days: int = 3
    slack: timedelta = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    period: Period
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "from": self.period.start.astimezone(self.period.tz).isoformat(),
            "to": self.period.end.astimezone(self.period.tz).isoformat(),
            "tz": self.period.tz_name,
            "group_by": self.period.group_by,
            "columns": list(self.columns),
            "rows": self.rows,
            "totals": self.totals,
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    expr: ColumnElement[Any]
    op: str = "sum"  # "sum" | "max"


h = HistoryEvent.__table__
conv = Conversation.__table__
agents = Agent.__table__


def _is(kinds: Sequence[str]) -> ColumnElement[bool]:
    return h.c.kind == kinds[0] if len(kinds) == 1 else h.c.kind.in_(kinds)


def _when(kinds: Sequence[str], value: ColumnElement[Any] | int) -> ColumnElement[Any]:
    return case((_is(kinds), value), else_=null())


def _flag(kinds: Sequence[str]) -> ColumnElement[Any]:
    return func.max(case((_is(kinds), 1), else_=0))


def _ratio(num: float | None, den: float | None, scale: float = 1.0) -> float | None:
    if not den or num is None:
        return None
    return round(num * scale / den, 2)


def _events_in(period: Period, options: ReportOptions) -> ColumnElement[bool]:
    return and_(
        h.c.occurred_at >= period.start,
        h.c.occurred_at < period.end + options.slack,
        h.c.conversation_id.is_not(None),
    )


def _marks() -> Any:
    """(conversation, tag) pairs an agent marked."""
    return (
        select(h.c.conversation_id.label("cid"), h.c.payload["tag"].as_string().label("tag"))
        .where(h.c.kind == K.MARKED)
        .distinct()
        .subquery("marks")
    )


async def _grouped(
    engine: AsyncEngine,
    period: Period,
    facts: Any,
    keys: Mapping[str, ColumnElement[Any]],
    measures: Sequence[Measure],
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """Aggregate fact rows per group (and per local day/hour); return rows and totals."""
    group = period.group_by
    source: Any = facts
    key: ColumnElement[Any]
    if group == "tag":
        marks = _marks()
        source = facts.join(marks, marks.c.cid == facts.c.cid)
        key = marks.c.tag
    elif group is not None and group in keys:
        key = keys[group]
    else:
        key = literal("")
    slot: ColumnElement[Any] = (
        bucket(facts.c.queued_at, BUCKET) if group in ("day", "hour") else literal(0)
    )
    agg = [
        (func.max(m.expr) if m.op == "max" else func.sum(m.expr)).label(m.name) for m in measures
    ]
    query = select(key.label("k"), slot.label("b"), *agg).select_from(source)
    if group == "tag" or group in keys or group in ("day", "hour"):
        query = query.group_by(key, slot)
    async with engine.connect() as db:
        raw = (await db.execute(query)).all()
        if group == "tag":
            total_q = select(*agg).select_from(facts)
            totals_raw = [(None, None, *(await db.execute(total_q)).one())]
        else:
            totals_raw = None
    merged: dict[str, dict[str, Any]] = {}
    totals: dict[str, Any] = {}
    for row in raw:
        label = _label(group, row[0], row[1], period)
        into = merged.setdefault(label, {})
        for m, value in zip(measures, row[2:], strict=True):
            _merge(into, m, value)
            if totals_raw is None:
                _merge(totals, m, value)
    if totals_raw is not None:
        for m, value in zip(measures, totals_raw[0][2:], strict=True):
            _merge(totals, m, value)
    for m in measures:
        totals.setdefault(m.name, 0 if m.op == "sum" else None)
    return sorted(merged.items()), totals


def _merge(into: dict[str, Any], m: Measure, value: Any) -> None:
    if value is None:
        into.setdefault(m.name, 0 if m.op == "sum" else None)
        return
    value = float(value)
    old = into.get(m.name)
    if m.op == "sum":
        into[m.name] = (old or 0) + value
    else:
        into[m.name] = value if old is None else max(old, value)


def _label(group: str | None, key: Any, bucket: Any, period: Period) -> str:
    if group in ("day", "hour"):
        local = datetime.fromtimestamp(int(bucket) * BUCKET, period.tz)
        return local.strftime("%Y-%m-%d") if group == "day" else local.strftime("%Y-%m-%d %H:00")
    if group is None:
        return "all"
    return str(key) if key not in (None, "") else NONE_LABEL


def _table(
    name: str,
    period: Period,
    grouped: tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]],
    finish: Callable[[dict[str, Any]], dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Report:
    rows, raw_totals = grouped
    group = period.group_by or "all"
    out = [{group: label, **finish(values)} for label, values in rows]
    totals = finish(raw_totals)
    columns = (group, *totals.keys())
    return Report(name, period, columns, out, totals, extra or {})


# ---------------------------------------------------------------------- voice


def _sl_threshold(options: ReportOptions) -> ColumnElement[Any]:
    per_queue = dict(options.service_level_by_queue)
    if not per_queue:
        return literal(options.service_level, Float())
    return case(
        *((conv.c.queue == q, literal(float(n), Float())) for q, n in per_queue.items()),
        else_=literal(options.service_level, Float()),
    )


VOICE_FACT_KINDS = (
    K.CALL_QUEUED,
    K.CALL_ANSWERED,
    K.CALL_ABANDONED,
    K.CALL_DEFLECTED,
    K.CALLBACK_BOOKED,
    K.CALLBACK_CONNECTED,
    K.CALL_ENDED,
    K.CLOSED,
)


def _per_call(period: Period, options: ReportOptions, *columns: Any) -> Any:
    """One row per voice call in the period (``cid`` + ``columns``), from its fact events."""
    return (
        select(h.c.conversation_id.label("cid"), *columns)
        .where(
            _events_in(period, options),
            h.c.channel == "voice",
            h.c.kind.in_(VOICE_FACT_KINDS),
        )
        .group_by(h.c.conversation_id)
        .subquery("per_call")
    )


def voice_facts(period: Period, options: ReportOptions) -> Any:
    per_call = _per_call(
        period,
        options,
        _flag([K.CALL_QUEUED]).label("queued"),
        _flag([K.CALL_ANSWERED]).label("answered"),
        func.max(_when([K.CALL_ANSWERED], h.c.wait_s)).label("answer_wait"),
        _flag([K.CALL_ABANDONED]).label("left_queue"),
        func.max(_when([K.CALL_ABANDONED], h.c.wait_s)).label("abandon_wait"),
        _flag([K.CALL_DEFLECTED]).label("deflected_event"),
        _flag([K.CALLBACK_BOOKED]).label("callback_booked"),
        _flag([K.CALLBACK_CONNECTED]).label("called_back"),
        func.max(_when([K.CALL_ENDED], h.c.talk_s)).label("talk"),
        func.max(_when([K.CALL_ENDED], h.c.hold_s)).label("hold"),
        func.max(_when([K.CALL_ENDED], h.c.wait_s)).label("end_wait"),
        func.max(_when([K.CALL_ENDED], h.c.occurred_at)).label("ended_at"),
        func.max(_when([K.CLOSED], h.c.occurred_at)).label("closed_at"),
    )
    p = per_call.c
    # Uncorrelated IN (...) sets: SQLite builds each once; a correlated EXISTS was
    # planned as a scan per call once ANALYZE saw linked_to_id mostly NULL.
    linked = conv.alias("linked")
    deflected_ids = select(linked.c.linked_to_id).where(
        linked.c.linked_to_id.is_not(None),
        linked.c.external_ref.like("%:deflected:%"),
        linked.c.queued_at >= period.start,  # it keeps the call's queue entry time
        linked.c.queued_at < period.end,
    )
    deflected = or_(p.deflected_event == 1, conv.c.id.in_(deflected_ids))
    callback_leg = conv.alias("callback_leg")
    connected = h.alias("connected")
    called_back_ids = (
        select(callback_leg.c.linked_to_id)
        .join(connected, connected.c.conversation_id == callback_leg.c.id)
        .where(
            connected.c.kind == K.CALLBACK_CONNECTED,
            callback_leg.c.linked_to_id.is_not(None),
        )
    )
    called_back = or_(p.called_back == 1, conv.c.id.in_(called_back_ids))
    answered = p.answered == 1
    # Times are folded raw (max of a timestamp) and turned into seconds once per call.
    wrap = case(
        (
            and_(answered, p.closed_at.is_not(None), p.ended_at.is_not(None)),
            case((p.closed_at > p.ended_at, epoch(p.closed_at) - epoch(p.ended_at)), else_=0.0),
        ),
        else_=0.0,
    )
    is_deflected = case((and_(deflected, ~answered), 1), else_=0)
    is_booked = case((and_(p.callback_booked == 1, ~answered), 1), else_=0)
    abandoned = and_(p.left_queue == 1, ~answered, ~deflected, p.callback_booked == 0)
    on_answered = case((answered, 1), else_=0)
    return (
        select(
            p.cid,
            conv.c.queue.label("queue"),
            agents.c.login.label("agent"),
            conv.c.channel.label("channel"),
            conv.c.queued_at.label("queued_at"),
            p.queued.label("offered"),
            on_answered.label("answered"),
            case((abandoned, 1), else_=0).label("abandoned"),
            case((abandoned, func.coalesce(p.abandon_wait, 0.0)), else_=0.0).label("abandon_wait"),
            is_deflected.label("deflected"),
            is_booked.label("callback_requested"),
            case((and_(called_back, ~answered), 1), else_=0).label("called_back"),
            case((answered, func.coalesce(p.answer_wait, 0.0)), else_=0.0).label("answer_wait"),
            case(
                (and_(answered, func.coalesce(p.answer_wait, 0.0) <= _sl_threshold(options)), 1),
                else_=0,
            ).label("in_sl"),
            case((answered, func.coalesce(p.talk, 0.0)), else_=0.0).label("talk"),
            case((answered, func.coalesce(p.hold, 0.0)), else_=0.0).label("hold"),
            wrap.label("wrap"),
            func.coalesce(p.answer_wait, p.abandon_wait, p.end_wait, 0.0).label("wait"),
        )
        .select_from(per_call)
        .join(conv, conv.c.id == p.cid)
        .outerjoin(agents, agents.c.id == conv.c.owner_id)
        .where(
            conv.c.channel == "voice",
            conv.c.linked_to_id.is_(None),  # a callback's outbound leg is not an inbound call
            conv.c.queued_at >= period.start,
            conv.c.queued_at < period.end,
        )
        .cte("voice_facts")
        .prefix_with("MATERIALIZED", dialect="sqlite")
    )


VOICE_KEYS = ("queue", "agent", "channel")


async def voice_report(engine: AsyncEngine, period: Period, options: ReportOptions) -> Report:
    f = voice_facts(period, options)
    c = f.c
    measures = [
        Measure("calls", literal(1)),
        Measure("offered", c.offered),
        Measure("answered", c.answered),
        Measure("abandoned", c.abandoned),
        Measure("abandon_wait_sum", c.abandon_wait),
        Measure("abandon_wait_max", case((c.abandoned == 1, c.abandon_wait), else_=null()), "max"),
        Measure("deflected", c.deflected),
        Measure("callback_requested", c.callback_requested),
        Measure("called_back", c.called_back),
        Measure("answer_wait_sum", c.answer_wait),
        Measure("in_sl", c.in_sl),
        Measure("talk_sum", c.talk),
        Measure("hold_sum", c.hold),
        Measure("wrap_sum", c.wrap),
        Measure("longest_wait", c.wait, "max"),
    ]
    grouped = await _grouped(engine, period, f, {k: c[k] for k in VOICE_KEYS}, measures)

    def finish(v: dict[str, Any]) -> dict[str, Any]:
        answered = v["answered"]
        handled = v["talk_sum"] + v["hold_sum"] + v["wrap_sum"]
        return {
            "calls": int(v["calls"]),
            "offered": int(v["offered"]),
            "answered": int(answered),
            "abandoned": int(v["abandoned"]),
            "avg_abandon_wait": _ratio(v["abandon_wait_sum"], v["abandoned"]),
            "max_abandon_wait": v["abandon_wait_max"],
            "deflected": int(v["deflected"]),
            "callback_requested": int(v["callback_requested"]),
            "called_back": int(v["called_back"]),
            "asa": _ratio(v["answer_wait_sum"], answered),
            "aht": _ratio(handled, answered),
            "avg_talk": _ratio(v["talk_sum"], answered),
            "avg_hold": _ratio(v["hold_sum"], answered),
            "avg_wrap": _ratio(v["wrap_sum"], answered),
            "answered_in_sl": int(v["in_sl"]),
            "service_level": _ratio(v["in_sl"], answered + v["abandoned"], 100.0),
            "longest_wait": v["longest_wait"],
        }

    return _table("voice", period, grouped, finish)


# ----------------------------------------------------------------------- text


def text_facts(period: Period, options: ReportOptions) -> Any:
    per_conv = (
        select(
            h.c.conversation_id.label("cid"),
            func.min(_when(K.INBOUND_TEXT, h.c.occurred_at)).label("first_in"),
            func.min(_when(K.OUTBOUND_TEXT, h.c.occurred_at)).label("first_out"),
            func.sum(case((h.c.kind.in_(K.INBOUND_TEXT), 1), else_=0)).label("msgs_in"),
            func.sum(case((h.c.kind.in_(K.OUTBOUND_TEXT), 1), else_=0)).label("msgs_out"),
            func.max(_when([K.CLOSED], h.c.occurred_at)).label("closed_at"),
        )
        .where(
            _events_in(period, options),
            h.c.channel.in_(K.TEXT_CHANNELS),
            h.c.kind.in_((*K.INBOUND_TEXT, *K.OUTBOUND_TEXT, K.CLOSED)),
        )
        .group_by(h.c.conversation_id)
        .subquery("per_conv")
    )
    p = per_conv.c
    sla = dict(options.first_response_sla)
    threshold = case(
        *((conv.c.channel == ch, literal(float(n), Float())) for ch, n in sla.items()),
        else_=null(),
    )
    responded = and_(p.first_in.is_not(None), p.first_out.is_not(None), p.first_out >= p.first_in)
    frt = case((responded, epoch(p.first_out) - epoch(p.first_in)), else_=null())
    start = epoch(conv.c.queued_at)
    resolved = p.closed_at.is_not(None)
    return (
        select(
            p.cid,
            conv.c.queue.label("queue"),
            agents.c.login.label("agent"),
            conv.c.channel.label("channel"),
            conv.c.queued_at.label("queued_at"),
            case((responded, 1), else_=0).label("responded"),
            func.coalesce(frt, 0.0).label("frt"),
            frt.label("frt_or_null"),
            case((and_(responded, frt <= threshold), 1), else_=0).label("in_sla"),
            case((p.first_in.is_not(None), 1), else_=0).label("customer_wrote"),
            case((resolved, 1), else_=0).label("resolved"),
            case((resolved, epoch(p.closed_at) - start), else_=0.0).label("resolution"),
            (p.msgs_in + p.msgs_out).label("messages"),
            p.msgs_in.label("messages_in"),
        )
        .select_from(per_conv)
        .join(conv, conv.c.id == p.cid)
        .outerjoin(agents, agents.c.id == conv.c.owner_id)
        .where(
            conv.c.channel.in_(K.TEXT_CHANNELS),
            conv.c.queued_at >= period.start,
            conv.c.queued_at < period.end,
        )
        .cte("text_facts")
        .prefix_with("MATERIALIZED", dialect="sqlite")
    )


async def text_report(engine: AsyncEngine, period: Period, options: ReportOptions) -> Report:
    f = text_facts(period, options)
    c = f.c
    measures = [
        Measure("conversations", literal(1)),
        Measure("customer_wrote", c.customer_wrote),
        Measure("responded", c.responded),
        Measure("frt_sum", c.frt),
        Measure("frt_max", c.frt_or_null, "max"),
        Measure("in_sla", c.in_sla),
        Measure("resolved", c.resolved),
        Measure("resolution_sum", c.resolution),
        Measure("messages", c.messages),
        Measure("messages_in", c.messages_in),
    ]
    grouped = await _grouped(engine, period, f, {k: c[k] for k in VOICE_KEYS}, measures)

    def finish(v: dict[str, Any]) -> dict[str, Any]:
        return {
            "conversations": int(v["conversations"]),
            "responded": int(v["responded"]),
            "avg_first_response": _ratio(v["frt_sum"], v["responded"]),
            "max_first_response": v["frt_max"],
            "responded_in_sla": int(v["in_sla"]),
            "sla": _ratio(v["in_sla"], v["customer_wrote"], 100.0),
            "resolved": int(v["resolved"]),
            "avg_resolution": _ratio(v["resolution_sum"], v["resolved"]),
            "messages": int(v["messages"]),
            "messages_per_conversation": _ratio(v["messages"], v["conversations"]),
        }

    return _table("text", period, grouped, finish)


# ------------------------------------------------------------------------ FCR


def _contact_facts(period: Period, options: ReportOptions) -> tuple[Any, Any]:
    """Each contact with the customer's next contact (LEAD over the customer's contacts).

    One window function over the contacts from ``start`` to ``end + fcr_days``
    replaces a correlated subquery per contact (one sort instead of N probes).
    """
    window = float(options.fcr_days * 86400)
    start = epoch(conv.c.queued_at)

    def following(value: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.lead(value).over(
            partition_by=conv.c.customer_id, order_by=(conv.c.queued_at, conv.c.id)
        )

    ranked = (
        select(
            conv.c.id.label("cid"),
            conv.c.customer_id,
            conv.c.queue,
            conv.c.owner_id,
            conv.c.channel,
            conv.c.queued_at,
            start.label("start"),
            following(conv.c.id).label("next_id"),
            following(start).label("next_start"),
        )
        .where(
            conv.c.queued_at >= period.start,
            conv.c.queued_at < period.end + timedelta(days=options.fcr_days),
            conv.c.linked_to_id.is_(None),
        )
        .subquery("ranked")
    )
    r = ranked.c
    repeat = and_(r.next_id.is_not(None), r.next_start - r.start <= window)
    facts = (
        select(
            r.cid,
            r.customer_id,
            r.queue.label("queue"),
            agents.c.login.label("agent"),
            r.channel.label("channel"),
            r.queued_at,
            r.start,
            case((repeat, r.next_id), else_=null()).label("repeat_id"),
            r.next_id,
            r.next_start,
        )
        .select_from(ranked)
        .outerjoin(agents, agents.c.id == r.owner_id)
        .where(r.queued_at < period.end)
        .subquery("contacts")
    )
    return facts, None


def _plain_contacts(period: Period) -> Any:
    return (
        select(
            conv.c.id.label("cid"),
            conv.c.queue.label("queue"),
            agents.c.login.label("agent"),
            conv.c.channel.label("channel"),
            conv.c.queued_at.label("queued_at"),
        )
        .select_from(conv)
        .outerjoin(agents, agents.c.id == conv.c.owner_id)
        .where(
            conv.c.queued_at >= period.start,
            conv.c.queued_at < period.end,
            conv.c.linked_to_id.is_(None),
        )
        .subquery("contacts")
    )


async def fcr_report(engine: AsyncEngine, period: Period, options: ReportOptions) -> Report:
    """Contacts are counted per group in SQL without the window; the repeats (a
    small share) come from one window query and are counted per group here, so
    the window runs once. Grouping by tag counts both in SQL."""
    f, _ = _contact_facts(period, options)
    c = f.c
    by_tag = period.group_by == "tag"
    if by_tag:
        repeated = case((c.repeat_id.is_not(None), 1), else_=0)
        measures = [Measure("contacts", literal(1)), Measure("repeated", repeated)]
        grouped = await _grouped(engine, period, f, {k: c[k] for k in VOICE_KEYS}, measures)
    else:
        plain = _plain_contacts(period)
        measures = [Measure("contacts", literal(1))]
        grouped = await _grouped(
            engine, period, plain, {k: plain.c[k] for k in VOICE_KEYS}, measures
        )
    later = conv.alias("repeat")
    repeats_q = (
        select(
            c.cid,
            c.customer_id,
            c.channel,
            c.queued_at,
            later.c.id,
            later.c.channel,
            later.c.queued_at,
            c.queue,
            c.agent,
            c.start,
        )
        # The repeat condition as plain predicates (not the CASE of repeat_id): PostgreSQL
        # then sees few rows and probes the primary key per repeat instead of merge-joining
        # every conversation (10M rows: 2.1 s -> 0.65 s in EXPLAIN ANALYZE).
        .join(later, later.c.id == c.next_id)
        .where(c.next_id.is_not(None), c.next_start - c.start <= float(options.fcr_days * 86400))
        .order_by(c.queued_at, c.cid)
        .limit(MAX_REPEAT_ROWS)
    )
    async with engine.connect() as db:
        repeats = (await db.execute(repeats_q)).all()
    if not by_tag:
        rows, totals = grouped
        values = dict(rows)
        for r in repeats:
            key = {"queue": r[7], "agent": r[8], "channel": r[2]}.get(period.group_by or "")
            label = _label(period.group_by, key, int(r[9] // BUCKET), period)
            values.setdefault(label, {"contacts": 0})
            values[label]["repeated"] = values[label].get("repeated", 0) + 1
        for v in values.values():
            v.setdefault("repeated", 0)
        totals["repeated"] = len(repeats)
        grouped = (sorted(values.items()), totals)
    tz = period.tz
    repeat_list = [
        {
            "conversation_id": r[0],
            "customer_id": r[1],
            "channel": r[2],
            "started_at": r[3].astimezone(tz).isoformat(),
            "repeat_conversation_id": r[4],
            "repeat_channel": r[5],
            "repeat_started_at": r[6].astimezone(tz).isoformat(),
        }
        for r in repeats[:MAX_REPEATS]
    ]

    def finish(v: dict[str, Any]) -> dict[str, Any]:
        contacts = int(v["contacts"])
        repeated_n = int(v["repeated"])
        return {
            "contacts": contacts,
            "repeated": repeated_n,
            "resolved_first_contact": contacts - repeated_n,
            "fcr": _ratio(contacts - repeated_n, contacts, 100.0),
        }

    extra = {
        "fcr_days": options.fcr_days,
        "repeat_contacts": repeat_list,
        "repeat_contacts_truncated": len(repeats) > MAX_REPEATS,
    }
    return _table("fcr", period, grouped, finish, extra)


# ---------------------------------------------------------------------- agents


def _agent_voice_facts(period: Period, options: ReportOptions) -> Any:
    """The part of :func:`voice_facts` the agents report reads: the answered calls'
    wait, talk, hold and wrap-up. Same events, same calls (every call keeps its row,
    so an agent whose calls were all unanswered still shows 0), without the
    abandoned / deflected / callback folding and its two IN (...) sets."""
    per_call = _per_call(
        period,
        options,
        _flag([K.CALL_ANSWERED]).label("answered"),
        func.max(_when([K.CALL_ANSWERED], h.c.wait_s)).label("answer_wait"),
        func.max(_when([K.CALL_ENDED], h.c.talk_s)).label("talk"),
        func.max(_when([K.CALL_ENDED], h.c.hold_s)).label("hold"),
        func.max(_when([K.CALL_ENDED], h.c.occurred_at)).label("ended_at"),
        func.max(_when([K.CLOSED], h.c.occurred_at)).label("closed_at"),
    )
    p = per_call.c
    answered = p.answered == 1
    wrap = case(
        (
            and_(answered, p.closed_at.is_not(None), p.ended_at.is_not(None)),
            case((p.closed_at > p.ended_at, epoch(p.closed_at) - epoch(p.ended_at)), else_=0.0),
        ),
        else_=0.0,
    )
    return (
        select(
            agents.c.login.label("agent"),
            conv.c.queued_at.label("queued_at"),
            case((answered, 1), else_=0).label("answered"),
            case((answered, func.coalesce(p.answer_wait, 0.0)), else_=0.0).label("answer_wait"),
            case((answered, func.coalesce(p.talk, 0.0)), else_=0.0).label("talk"),
            case((answered, func.coalesce(p.hold, 0.0)), else_=0.0).label("hold"),
            wrap.label("wrap"),
        )
        .select_from(per_call)
        .join(conv, conv.c.id == p.cid)
        .outerjoin(agents, agents.c.id == conv.c.owner_id)
        .where(
            conv.c.channel == "voice",
            conv.c.linked_to_id.is_(None),
            conv.c.queued_at >= period.start,
            conv.c.queued_at < period.end,
        )
        .subquery("agent_voice")
    )


async def _agent_voice(engine: AsyncEngine, period: Period, options: ReportOptions) -> Report:
    f = _agent_voice_facts(period, options)
    c = f.c
    measures = [
        Measure("answered", c.answered),
        Measure("answer_wait_sum", c.answer_wait),
        Measure("talk_sum", c.talk),
        Measure("hold_sum", c.hold),
        Measure("wrap_sum", c.wrap),
    ]
    grouped = await _grouped(engine, period, f, {"agent": c.agent}, measures)

    def finish(v: dict[str, Any]) -> dict[str, Any]:
        answered = v["answered"]
        handled = v["talk_sum"] + v["hold_sum"] + v["wrap_sum"]
        return {
            "answered": int(answered),
            "asa": _ratio(v["answer_wait_sum"], answered),
            "aht": _ratio(handled, answered),
            "avg_talk": _ratio(v["talk_sum"], answered),
            "avg_hold": _ratio(v["hold_sum"], answered),
            "avg_wrap": _ratio(v["wrap_sum"], answered),
        }

    return _table("voice", period, grouped, finish)


async def agents_report(engine: AsyncEngine, period: Period, options: ReportOptions) -> Report:
    """Per agent (the conversation's last owner): voice handling and text handling."""
    by_agent = Period(period.start, period.end, period.tz, "agent")
    # Two connections at once: the two queries run in parallel (SQLite releases the
    # GIL while a statement steps; PostgreSQL uses one backend each).
    voice, text = await asyncio.gather(
        _agent_voice(engine, by_agent, options), text_report(engine, by_agent, options)
    )
    voice_cols = ("answered", "asa", "aht", "avg_talk", "avg_hold", "avg_wrap")
    text_cols = ("conversations", "avg_first_response", "messages", "avg_resolution")
    rows: dict[str, dict[str, Any]] = {}
    for row in voice.rows:
        rows.setdefault(row["agent"], {}).update({f"voice_{k}": row[k] for k in voice_cols})
    for row in text.rows:
        rows.setdefault(row["agent"], {}).update({f"text_{k}": row[k] for k in text_cols})
    columns = ("agent", *(f"voice_{k}" for k in voice_cols), *(f"text_{k}" for k in text_cols))
    out = []
    for login in sorted(rows):
        values = rows[login]
        out.append({col: values.get(col) if col != "agent" else login for col in columns})
    totals = {f"voice_{k}": voice.totals[k] for k in voice_cols} | {
        f"text_{k}": text.totals[k] for k in text_cols
    }
    return Report("agents", by_agent, columns, out, {"agent": "all", **totals})
