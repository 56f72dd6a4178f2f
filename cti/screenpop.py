"""Screen-pop: the customer card, the latest history and the interaction, to one agent.

The history comes from the database plus the entries still waiting in the
history writer, so the pop never waits for a batch to be written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cti.conversations import conversation_json
from cti.customers import CustomerService
from cti.history import HistoryWriter, entry_json, event_json, merged_family, timeline
from cti.hub import EventHub
from cti.models import Agent, Conversation

POP_HISTORY = 20


class ScreenPop:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        customers: CustomerService,
        history: HistoryWriter,
        hub: EventHub,
    ) -> None:
        self._sessions = sessions
        self._customers = customers
        self._history = history
        self._hub = hub

    async def build(
        self, conv: Conversation, interaction: dict[str, Any], owner_login: str | None = None
    ) -> dict[str, Any]:
        customer = await self._customers.get(conv.customer_id)
        async with self._sessions() as session:
            family = await merged_family(session, customer.id)
        # Snapshot the writer's backlog BEFORE reading the table: an entry written
        # in between then shows up twice (dropped below) rather than not at all.
        backlog = self._history.pending_for(family)
        events, _ = await timeline(self._sessions, customer.id, limit=POP_HISTORY)
        stored = [event_json(e) for e in events]
        written = {(e["kind"], e["conversation_id"], e["occurred_at"]) for e in stored}
        pending = [
            entry_json(e)
            for e in backlog
            if (e.kind, e.conversation_id, e.occurred_at.isoformat()) not in written
        ]
        merged = sorted(pending + stored, key=lambda e: str(e["occurred_at"]), reverse=True)
        history = merged[:POP_HISTORY]
        return {
            "channel": conv.channel,
            "customer": await self._customers.card(customer),
            "conversation": conversation_json(conv, owner_login),
            "history": history,
            "interaction": interaction,
        }

    async def pop(self, agent: Agent, conv: Conversation, interaction: dict[str, Any]) -> int:
        body = await self.build(conv, interaction)
        return self._hub.publish([agent.id], "screen_pop", body)

    async def on_text_assigned(self, conv: Conversation, agent: Agent) -> None:
        await self.pop(agent, conv, {"queue": conv.queue, "contact": conv.contact})
