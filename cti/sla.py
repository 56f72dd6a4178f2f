"""First-reply SLA of text conversations: a breach is raised once, on one node.

Theory of operation: the ``sla`` duty (``cti.cluster.duties``: one node in a
cluster, the only node otherwise) runs :class:`SlaWatch`, which every
``check_every`` seconds asks the database for open text conversations (SMS,
chat, social) whose first agent reply is overdue: created more than the
channel's limit ago (``sms_first_reply_sla``; chat 60 s and social 1 h, the
limits the text report uses), no outbound message (``message_out``...) in their
history, and no breach recorded yet. Everything it needs is in the database
(``conversations.created_at``, the history), so deadlines survive a restart
and a node that takes the duty over continues where the last one stopped.

Raising a breach: INSERT of the history event ``sla_breached`` with the
unique dedup key ``sla:<conversation id>`` (``ON CONFLICT DO NOTHING``). Only
the node whose insert made the row publishes ``sla_breach`` through the hub
to every supervisor and admin (the hub's bus reaches their WebSockets on any
node). So a breach is raised once, even when it happened while no node was
up (it is raised by the first node up) or when two nodes briefly both ran the
duty. A node that dies between the insert and the publish loses that one
notification; the history keeps the breach.

Conversations older than ``horizon`` (7 days) are not watched: an abandoned
conversation left open for weeks is not news.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from cti.cluster.duties import duties_of, local_duties
from cti.history import HistoryEntry
from cti.keys import SERVICES
from cti.logs import correlate
from cti.models import Agent, Conversation, HistoryEvent, utcnow
from cti.reports.kinds import OUTBOUND_TEXT
from cti.services import Services

log = logging.getLogger(__name__)

DUTY = "sla"
CHAT_SLA = 60.0
SOCIAL_SLA = 3600.0
HORIZON = 7 * 86400.0
MAX_PASS = 200
OPEN = ("queued", "assigned", "wrapup")
SUPERVISOR_ROLES = ("supervisor", "admin")


def first_reply_limits(services: Services) -> dict[str, float]:
    """Seconds to the first agent reply, per text channel (as the text report uses)."""
    return {"sms": services.settings.sms_first_reply_sla, "chat": CHAT_SLA,
            "social": SOCIAL_SLA}


def breach_key(conversation_id: int) -> str:
    return f"sla:{conversation_id}"


class SlaWatch:
    def __init__(
        self,
        services: Services,
        *,
        limits: Mapping[str, float] | None = None,
        check_every: float = 1.0,
        horizon: float = HORIZON,
    ) -> None:
        self._services = services
        self.limits = dict(limits) if limits is not None else first_reply_limits(services)
        self.check_every = check_every
        self.horizon = horizon
        self.raised = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sla-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SLA check failed; next in %g s", self.check_every)
            await asyncio.sleep(self.check_every)

    async def overdue(self, now: datetime | None = None) -> list[Conversation]:
        """Open text conversations past their first-reply limit, no reply, not raised."""
        now = utcnow() if now is None else now
        c, h = Conversation, HistoryEvent
        deadline = or_(*(
            and_(c.channel == channel, c.created_at <= now - timedelta(seconds=limit))
            for channel, limit in self.limits.items()
        ))
        replied = exists().where(h.conversation_id == c.id, h.kind.in_(OUTBOUND_TEXT))
        # by conversation (indexed), not by dedup key: a partitioned history has no
        # dedup_key index (the trigger's history_dedup table keeps them)
        raised = exists().where(h.conversation_id == c.id, h.kind == "sla_breached")
        async with self._services.sessions() as session:
            rows = await session.scalars(
                select(c)
                .where(c.status.in_(OPEN), c.channel.in_(list(self.limits)),
                       c.created_at > now - timedelta(seconds=self.horizon),
                       deadline, ~replied, ~raised)
                .order_by(c.created_at, c.id)
                .limit(MAX_PASS)
            )
            return list(rows)

    async def check_once(self, now: datetime | None = None) -> list[int]:
        """Raise every breach due; the ids of the conversations raised by this call."""
        now = utcnow() if now is None else now
        done: list[int] = []
        supervisors: list[int] | None = None
        for conv in await self.overdue(now):
            with correlate(f"conv:{conv.id}"):
                limit = self.limits[conv.channel]
                due = conv.created_at + timedelta(seconds=limit)
                body: dict[str, Any] = {
                    "conversation_id": conv.id,
                    "customer_id": conv.customer_id,
                    "channel": conv.channel,
                    "queue": conv.queue,
                    "owner_id": conv.owner_id,
                    "status": conv.status,
                    "created_at": conv.created_at.isoformat(),
                    "sla_s": limit,
                    "due_at": due.isoformat(),
                    "overdue_s": round((now - due).total_seconds(), 1),
                }
                if not await self._record(conv, body, now):
                    continue  # raised already (by another node or before a restart)
                if supervisors is None:
                    supervisors = await self._supervisors()
                if supervisors:
                    self._services.hub.publish(supervisors, "sla_breach", body)
                self.raised += 1
                done.append(conv.id)
                log.info("first-reply SLA breached: %s conversation %s (limit %g s)",
                         conv.channel, conv.id, limit)
        return done

    async def _record(self, conv: Conversation, body: dict[str, Any], now: datetime) -> bool:
        """The ``sla_breached`` history event, once (True if this call wrote it)."""
        entry = HistoryEntry(customer_id=conv.customer_id, conversation_id=conv.id,
                             kind="sla_breached", channel=conv.channel, payload=body,
                             occurred_at=now, dedup_key=breach_key(conv.id))
        async with self._services.sessions() as session:
            dialect = session.bind.dialect.name if session.bind is not None else ""
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            result = await session.execute(
                insert(HistoryEvent).values(**entry.row())
                .on_conflict_do_nothing()  # any unique dedup index/trigger: a no-op
            )
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def _supervisors(self) -> list[int]:
        async with self._services.sessions() as session:
            ids = await session.scalars(select(Agent.id).where(Agent.role.in_(SUPERVISOR_ROLES)))
            return list(ids)


SLA: web.AppKey[SlaWatch] = web.AppKey("sla_watch", SlaWatch)


def setup_sla(app: web.Application, **options: Any) -> SlaWatch:
    """Install the SLA watch (``SLA``) as the ``sla`` duty (once)."""
    existing = app.get(SLA)
    if existing is not None:
        return existing
    watch = SlaWatch(app[SERVICES], **options)
    app[SLA] = watch

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        duties = duties_of(app) or local_duties()
        await duties.add(DUTY, watch.start, watch.stop)
        try:
            yield
        finally:
            await duties.remove(DUTY)

    app.cleanup_ctx.append(ctx)
    return watch

