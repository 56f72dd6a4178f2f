"""Supervisor wallboard: queues, agents, today's figures and open text conversations.

``GET /api/v1/wallboard`` (supervisor or admin) returns one snapshot (the page
is ``/wallboard/``):

- ``queues``: per queue of every linked PBX, the waiting callers (their waits,
  no numbers), the longest wait, and each member's state (``available``,
  ``on_call``, ``ringing``, ``paused`` with its reason, ``wrapup``,
  ``logged_out``) with counts, read from the live PbxTracker;
- ``today``: calls offered / handled and the service level (answered within
  20 s over answered + abandoned), texts handled (answered at least once)
  since 00:00 UTC, from the history store through cti.reports;
- ``conversations``: open text conversations with owner and first-reply SLA
  state (target: chat 60 s, SMS ``sms_first_reply_sla``, social 1 h).

Theory of operation (live): while at least one supervisor or admin socket is
connected on this node, a task builds the snapshot every second; when it
differs from the last one sent it is encoded once and offered to every such
socket as ``{"type": "wallboard", ...}`` (``EventHub.send_live``: no seq, no
replay; a reconnecting page fetches a fresh snapshot over REST). Today's
figures are recomputed at most every ``TODAY_EVERY`` seconds.

Several nodes (Redis set): only the node holding a PBX's AMI link has its
live tracker. That node writes the PBX's queue snapshots to Redis every
``SHARE_EVERY`` seconds (``cti:wallboard:pbx:<name>``, expiring after
``SHARE_TTL``); every other node builds the ``queues`` of that PBX from the
key, ageing the waits by the time since it was written, so a supervisor sees
the same board on any node (at most ``SHARE_EVERY`` s older). A PBX whose key
is missing (no holder, Redis down) is listed in ``unavailable``. Today's
figures and conversations come from the shared database on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from redis.exceptions import RedisError
from sqlalchemy import func, select

from cti.api import principal
from cti.auth import Role
from cti.hub import Subscription
from cti.links.pbx import PBX_LINKS
from cti.models import Agent, Conversation, Customer, HistoryEvent
from cti.services import Services
from pbx.state import MemberSnapshot, QueueSnapshot, WaitingCaller

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

PUSH_EVERY = 1.0
TODAY_EVERY = 10.0
SHARE_EVERY = 1.0
SHARE_TTL = 5
SHARED_KEY = "cti:wallboard:pbx:{name}"
MAX_CONVERSATIONS = 200
CHAT_SLA = 60.0
SOCIAL_SLA = 3600.0
AMBER_AT = 0.5  # share of the target after which an unanswered conversation is amber
INBOUND = ("message_in", "chat_in", "sms_in")
OUTBOUND = ("message_out", "chat_out", "sms_out")
OPEN = ("queued", "assigned", "wrapup")
AGENT_STATES = ("available", "on_call", "ringing", "paused", "wrapup", "logged_out")
_LOGGED_OUT = {"UNAVAILABLE", "INVALID", "UNKNOWN", ""}
_RINGING = {"RINGING", "RINGINUSE"}
_BUSY = {"INUSE", "BUSY", "ONHOLD"}


def member_state(member: MemberSnapshot, wrapup: bool = False) -> str:
    """One word for a queue member (pure). Paused wins over everything but logged out."""
    device = member.device_state.upper()
    if device in _LOGGED_OUT:
        return "logged_out"
    if member.paused:
        return "paused"
    if device in _RINGING:
        return "ringing"
    if member.in_call or device in _BUSY:
        return "on_call"
    if wrapup:
        return "wrapup"
    return "available"


def sla_state(target: float, first_in: float, first_out: float | None, now: float) -> str:
    """``met``/``breached`` once answered, else ``ok``/``amber``/``red`` by elapsed time."""
    if first_out is not None:
        return "met" if first_out - first_in <= target else "breached"
    elapsed = now - first_in
    if elapsed >= target:
        return "red"
    return "amber" if elapsed >= target * AMBER_AT else "ok"


def queue_json(q: QueueSnapshot, names: dict[str, str], wrapup: set[str]) -> dict[str, Any]:
    members = []
    counts = dict.fromkeys(AGENT_STATES, 0)
    for m in q.members:
        state = member_state(m, m.interface in wrapup)
        counts[state] += 1
        members.append({
            "interface": m.interface,
            "name": names.get(m.interface) or m.name or m.interface,
            "state": state,
            "reason": m.pause_reason if state == "paused" else "",
            "calls_taken": m.calls_taken,
        })
    members.sort(key=lambda m: (AGENT_STATES.index(m["state"]), m["name"]))
    return {
        "pbx": q.pbx,
        "name": q.name,
        "waiting": len(q.waiting),
        "longest_wait": round(q.longest_wait, 1),
        "waits": [round(w.wait, 1) for w in sorted(q.waiting, key=lambda w: w.position)],
        "agents": counts,
        "members": members,
        "completed": q.completed,
        "abandoned": q.abandoned,
    }


def encode_queues(queues: Iterable[QueueSnapshot], at: float) -> str:
    """One PBX's queue snapshots as the holder shares them (pure)."""
    return json.dumps({"at": at, "queues": [dataclasses.asdict(q) for q in queues]},
                      ensure_ascii=False)


def decode_queues(raw: bytes | str, now: float) -> list[QueueSnapshot]:
    """Shared snapshots back, waits aged to ``now`` (pure); ValueError if malformed."""
    try:
        data = json.loads(raw)
        age = max(0.0, now - float(data["at"]))
        out = []
        for q in data["queues"]:
            waiting = tuple(
                WaitingCaller(**{**w, "wait": float(w["wait"]) + age}) for w in q["waiting"])
            out.append(QueueSnapshot(
                pbx=str(q["pbx"]), name=str(q["name"]), waiting=waiting,
                longest_wait=float(q["longest_wait"]) + age if waiting else 0.0,
                members=tuple(MemberSnapshot(**m) for m in q["members"]),
                completed=int(q["completed"]), abandoned=int(q["abandoned"])))
        return out
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a shared queue snapshot: {exc}") from None


@dataclass(slots=True)
class _Today:
    at: float = 0.0
    day: str = ""
    figures: dict[str, Any] | None = None


class Wallboard:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._today = _Today()
        self._last_sent = ""
        self.pushes = 0

    @property
    def services(self) -> Services:
        from cti.keys import SERVICES

        return self._app[SERVICES]

    def _links(self) -> dict[str, Any]:
        registry = self._app.get(PBX_LINKS)
        return dict(registry.links) if registry is not None else {}

    async def _queues(self, now: float) -> tuple[list[QueueSnapshot], list[str]]:
        """Queues of the PBXs linked here, and of the others from their holders' shares."""
        links = self._links()
        queues = [q for link in links.values() for q in link.queues()]
        redis = self.services.redis
        elsewhere = [a.name for a in self.services.settings.ami if a.name not in links]
        if redis is None or not elsewhere:
            return queues, []
        unavailable: list[str] = []
        try:
            raws = await redis.mget([SHARED_KEY.format(name=n) for n in elsewhere])
        except (RedisError, OSError) as exc:
            log.warning("wallboard: shared queues unreadable (%s)", type(exc).__name__)
            return queues, elsewhere
        for name, raw in zip(elsewhere, raws, strict=True):
            try:
                if raw is None:
                    raise ValueError("no node shares it")
                queues.extend(decode_queues(raw, now))
            except ValueError as exc:
                log.debug("wallboard: pbx %s: %s", name, exc)
                unavailable.append(name)
        return queues, unavailable

    async def share(self) -> int:
        """Write the queues of every PBX linked here for the other nodes; how many PBXs."""
        redis = self.services.redis
        if redis is None:
            return 0
        now = time.time()
        shared = 0
        for name, link in self._links().items():
            try:
                await redis.set(SHARED_KEY.format(name=name),
                                encode_queues(link.queues(), now), ex=SHARE_TTL)
                shared += 1
            except (RedisError, OSError) as exc:
                log.warning("wallboard: sharing pbx %s failed (%s)", name, type(exc).__name__)
        return shared

    async def run_share(self) -> None:
        while True:
            await asyncio.sleep(SHARE_EVERY)
            try:
                await self.share()
            except Exception:  # the board must keep being shared
                log.exception("wallboard: sharing the queues failed")

    async def snapshot(self) -> dict[str, Any]:
        now = time.time()
        agents, wrapup_owners, conversations = await self._conversations(now)
        names = {a.endpoint: a.name or a.login for a in agents.values() if a.endpoint}
        wrapup = {a.endpoint for aid, a in agents.items() if aid in wrapup_owners and a.endpoint}
        snapshots, unavailable = await self._queues(now)
        queues = [queue_json(q, names, wrapup) for q in snapshots]
        queues.sort(key=lambda q: (q["pbx"], q["name"]))
        out: dict[str, Any] = {
            "at": datetime.fromtimestamp(now, UTC).isoformat(),
            "queues": queues,
            "today": await self._today_figures(now),
            "conversations": conversations,
        }
        if unavailable:
            out["unavailable"] = unavailable
        return out

    async def _conversations(
        self, now: float
    ) -> tuple[dict[int, Agent], set[int], list[dict[str, Any]]]:
        svc = self.services
        first_in = func.min(HistoryEvent.occurred_at).filter(HistoryEvent.kind.in_(INBOUND))
        first_out = func.min(HistoryEvent.occurred_at).filter(HistoryEvent.kind.in_(OUTBOUND))
        stmt = (
            select(Conversation, Customer.name, first_in, first_out)
            .join(Customer, Customer.id == Conversation.customer_id)
            .outerjoin(HistoryEvent, HistoryEvent.conversation_id == Conversation.id)
            .where(Conversation.status.in_(OPEN))
            .group_by(Conversation.id, Customer.name)
            .order_by(Conversation.queued_at)
            .limit(MAX_CONVERSATIONS)
        )
        async with svc.sessions() as session:
            rows = (await session.execute(stmt)).all()
            agents = {a.id: a for a in (await session.scalars(select(Agent))).all()}
        wrapup_owners: set[int] = set()
        out: list[dict[str, Any]] = []
        sms_target = svc.settings.sms_first_reply_sla
        for conv, customer_name, fin, fout in rows:
            if conv.channel == "voice":
                if conv.status == "wrapup" and conv.owner_id is not None:
                    wrapup_owners.add(conv.owner_id)
                continue
            target = {"chat": CHAT_SLA, "social": SOCIAL_SLA}.get(conv.channel, sms_target)
            start = _ts(fin) if fin is not None else _ts(conv.queued_at)
            replied = _ts(fout) if fout is not None and _ts(fout) >= start else None
            owner = agents.get(conv.owner_id) if conv.owner_id is not None else None
            out.append({
                "id": conv.id,
                "channel": conv.channel,
                "queue": conv.queue,
                "status": conv.status,
                "customer": customer_name,
                "owner": (owner.name or owner.login) if owner else None,
                "waiting": round(max(0.0, now - start), 1),
                "sla": {"target": target, "state": sla_state(target, start, replied, now)},
            })
        return agents, wrapup_owners, out

    async def _today_figures(self, now: float) -> dict[str, Any] | None:
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        if self._today.figures is not None and self._today.day == day and (
            now - self._today.at < TODAY_EVERY
        ):
            return self._today.figures
        try:
            figures = await today_figures(self.services, now)
        except Exception:  # the reports are a side panel: the live board goes on
            log.exception("wallboard: today's figures failed")
            return self._today.figures
        self._today = _Today(now, day, figures)
        return figures

    def dirty(self) -> None:
        """Force the next figures read (e.g. after a call ended)."""
        self._today.at = 0.0

    # -- live push -------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(PUSH_EVERY)
            hub = self.services.hub
            if not hub.any_socket(_supervisor):
                self._last_sent = ""
                continue
            try:
                snap = await self.snapshot()
            except Exception:
                log.exception("wallboard snapshot failed")
                continue
            key = json.dumps({k: v for k, v in snap.items() if k != "at"}, sort_keys=True,
                             default=str)
            if key == self._last_sent:
                continue
            self._last_sent = key
            hub.send_live(_supervisor, "wallboard", snap)
            self.pushes += 1


def _supervisor(sub: Subscription) -> bool:
    return sub.role in (Role.SUPERVISOR.value, Role.ADMIN.value) and sub.client != "softphone"


def _ts(value: datetime) -> float:
    return value.replace(tzinfo=UTC).timestamp() if value.tzinfo is None else value.timestamp()


async def today_figures(svc: Services, now: float) -> dict[str, Any]:
    """Calls and texts of the UTC day so far, with the voice service level (cti.reports)."""
    from cti.reports.metrics import ReportOptions, text_report, voice_report
    from cti.reports.period import Period

    start = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    period = Period(start, start + timedelta(days=1), ZoneInfo("UTC"))
    options = ReportOptions(first_response_sla={"chat": CHAT_SLA, "social": SOCIAL_SLA,
                                                "sms": svc.settings.sms_first_reply_sla})
    voice = (await voice_report(svc.engine, period, options)).totals
    text = (await text_report(svc.engine, period, options)).totals
    return {
        "day": start.date().isoformat(),
        "calls_offered": int(voice.get("offered") or 0),
        "calls_handled": int(voice.get("answered") or 0),
        "calls_abandoned": int(voice.get("abandoned") or 0),
        "service_level": voice.get("service_level"),
        "service_level_target": options.service_level,
        "texts": int(text.get("conversations") or 0),
        "texts_handled": int(text.get("responded") or 0),
        "text_sla": text.get("sla"),
    }


WALLBOARD: web.AppKey[Wallboard] = web.AppKey("wallboard", Wallboard)


@routes.get("/api/v1/wallboard")
async def get_wallboard(request: web.Request) -> web.Response:
    principal(request, Role.SUPERVISOR)
    return web.json_response(await request.app[WALLBOARD].snapshot(), dumps=_dumps)


async def wallboard_page(request: web.Request) -> web.StreamResponse:
    """The page (its script and style are under /desk/static/, with the desk's CSP)."""
    from cti.web import CSP, STATIC

    return web.FileResponse(STATIC / "wallboard.html", headers={
        "Cache-Control": "no-store", "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


async def _push_ctx(app: web.Application) -> AsyncIterator[None]:
    board = app[WALLBOARD]
    tasks = [asyncio.create_task(board.run(), name="wallboard-push")]
    if board.services.redis is not None:
        tasks.append(asyncio.create_task(board.run_share(), name="wallboard-share"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def setup_wallboard(app: web.Application) -> Wallboard:
    board = Wallboard(app)
    app[WALLBOARD] = board
    app.add_routes(routes)
    app.router.add_get("/wallboard/", wallboard_page)
    app.cleanup_ctx.append(_push_ctx)
    return board
