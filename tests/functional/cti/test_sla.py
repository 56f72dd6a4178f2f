"""First-reply SLA breaches (cti.sla) on a real database (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from cti.auth import Role
from cti.config import Settings
from cti.history import HistoryEntry
from cti.identities import IdentityKind
from cti.models import Conversation, HistoryEvent, utcnow
from cti.services import Services
from cti.sla import SlaWatch, breach_key, first_reply_limits
from tests.functional.cti.conftest import PASSWORD

pytestmark = pytest.mark.integration
LIMITS = {"sms": 30.0, "chat": 60.0, "social": 3600.0}


async def breaches(services: Services) -> list[tuple[int | None, str | None]]:
    async with services.sessions() as session:
        rows = await session.execute(
            select(HistoryEvent.conversation_id, HistoryEvent.dedup_key)
            .where(HistoryEvent.kind == "sla_breached").order_by(HistoryEvent.id))
        return [(r[0], r[1]) for r in rows]


async def test_breach_raised_once_to_supervisors_and_across_a_restart(
    settings: Settings,
) -> None:
    svc = Services(settings)
    await svc.start()
    try:
        assert first_reply_limits(svc)["sms"] == settings.sms_first_reply_sla
        sup = await svc.agents.create("sup1", PASSWORD, name="Sup", role=Role.SUPERVISOR)
        agent = await svc.agents.create("agent1", PASSWORD, name="A", role=Role.AGENT)
        sup_sub = svc.hub.subscribe(sup.id, None, role="supervisor")
        agent_sub = svc.hub.subscribe(agent.id, None)
        late = await svc.inbox.receive("sms", "+79161234567", "hello?")
        answered = await svc.inbox.receive("sms", "+79161234568", "hi")
        chat = await svc.inbox.receive("chat", "visitor-1", "anyone?",
                                       kind=IdentityKind.WEBCHAT)
        await svc.history.add(HistoryEntry(customer_id=answered.customer_id,
                                           conversation_id=answered.id, kind="message_out",
                                           channel="sms", payload={"text": "on it"}))
        await svc.history.flush()
        watch = SlaWatch(svc, limits=LIMITS)
        now = utcnow()
        assert await watch.check_once(now) == []  # nothing overdue yet
        # 31 s later: the unanswered SMS is late, the chat (60 s) not yet
        assert await watch.check_once(now + timedelta(seconds=31)) == [late.id]
        assert await watch.check_once(now + timedelta(seconds=32)) == []  # once
        frame = json.loads(sup_sub.queue.get_nowait())
        assert frame["type"] == "sla_breach"
        assert (frame["conversation_id"], frame["channel"], frame["sla_s"]) == (late.id, "sms",
                                                                                30.0)
        assert 1.0 <= frame["overdue_s"] < 31.0  # 1 s past the deadline, + setup time
        assert sup_sub.queue.empty()
        told = [json.loads(agent_sub.queue.get_nowait())["type"]
                for _ in range(agent_sub.queue.qsize())]
        assert "sla_breach" not in told and told  # agents get their pops, not breaches
        assert await breaches(svc) == [(late.id, breach_key(late.id))]
    finally:
        await svc.stop()
    # a new process on the same database: the chat breached while no node was up
    svc = Services(settings)
    await svc.start()
    try:
        watch = SlaWatch(svc, limits=LIMITS)
        later = now + timedelta(seconds=120)
        assert await watch.check_once(later) == [chat.id]  # raised once, late
        assert await watch.check_once(later) == []
        assert await SlaWatch(svc, limits=LIMITS).check_once(later) == []  # a second node
        assert await breaches(svc) == [(late.id, breach_key(late.id)),
                                       (chat.id, breach_key(chat.id))]
        # closed conversations and those older than the horizon are not watched
        closed = await svc.inbox.receive("sms", "+79161234569", "bye")
        async with svc.sessions() as session, session.begin():
            await session.execute(update(Conversation).where(Conversation.id == closed.id)
                                  .values(status="closed"))
        hour = utcnow() + timedelta(seconds=3600)
        assert await watch.check_once(hour) == []
        stale = await svc.inbox.receive("sms", "+79161234570", "still there?")
        assert await SlaWatch(svc, limits=LIMITS, horizon=60.0).check_once(hour) == []
        assert await watch.check_once(hour) == [stale.id]
        async with svc.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(HistoryEvent)
                                         .where(HistoryEvent.kind == "sla_breached"))
        assert total == 3
    finally:
        await svc.stop()
