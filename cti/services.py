"""All server objects, built in one place and passed into constructors.

The lead wires the real links through the seams here: feed ``pbx.changes``
events into ``calls.handle(change)``, inbound SMS/chat into
``inbox.receive(...)`` and receipts into ``inbox.delivery_status(...)``, set
``conversations.outbound`` to the SMS/chat sender, and register each link's
state probe with ``links.register`` (same name replaces the placeholder).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cti.agents import AgentService
from cti.auth import Role, TokenSigner
from cti.calls import CallHandler
from cti.cluster.hub import ClusterHub
from cti.config import Settings
from cti.conversations import ConversationService
from cti.customers import CustomerService
from cti.db import create_engine, migrate, sessionmaker
from cti.errors import Conflict
from cti.history import HistoryWriter
from cti.hub import EventHub
from cti.messaging import TextInbox
from cti.screenpop import ScreenPop

LinkProbe = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class LinkRegistry:
    """Health of each external link: name -> async probe returning {"kind", "up", ...}."""

    probes: dict[str, LinkProbe] = field(default_factory=dict)

    def register(self, name: str, probe: LinkProbe) -> None:
        self.probes[name] = probe

    async def report(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, probe in list(self.probes.items()):  # a link may register meanwhile
            try:
                out[name] = await probe()
            except Exception as exc:  # a probe failure is a down link, not a 500
                out[name] = {"up": False, "detail": f"{type(exc).__name__}: {exc}"}
        return out


class Services:
    def __init__(self, settings: Settings, engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings.database_url())
        self.sessions: async_sessionmaker[AsyncSession] = sessionmaker(self.engine)
        self.history = HistoryWriter(
            self.engine,
            batch=settings.history_batch,
            flush_interval=settings.history_flush_interval,
        )
        self.hub: EventHub = (
            ClusterHub(
                settings.node_id, replay=settings.replay_buffer, queue_size=settings.socket_queue
            )
            if settings.redis_url  # cluster mode: events go through the Redis bus
            else EventHub(replay=settings.replay_buffer, queue_size=settings.socket_queue)
        )
        self.signer = TokenSigner(settings.secret_key, settings.token_ttl)
        self.agents = AgentService(self.sessions, self.signer, settings.max_text_conversations)
        self.customers = CustomerService(self.sessions, self.history, settings.default_region)
        self.conversations = ConversationService(self.sessions, self.history)
        self.screen_pop = ScreenPop(self.sessions, self.customers, self.history, self.hub)
        self.conversations.on_assigned.append(self.screen_pop.on_text_assigned)
        self.calls = CallHandler(
            self.sessions,
            self.customers,
            self.conversations,
            self.agents,
            self.history,
            self.screen_pop,
            self.hub,
        )
        self.inbox = TextInbox(
            self.sessions, self.customers, self.conversations, self.history, self.hub
        )
        self.links = LinkRegistry()
        self.links.register("database", self._database_probe)
        for pbx in settings.ami:
            self.links.register(f"pbx:{pbx.name}", self._pbx_probe(pbx.name, pbx.host, pbx.port))
        for smpp in settings.smpp:
            self.links.register(f"smpp:{smpp.name}", self._unwired_probe("sms_gateway"))
        self.redis: Any = None

    async def _database_probe(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return {"kind": "database", "up": True, "backend": self.engine.dialect.name}

    def _pbx_probe(self, name: str, host: str, port: int) -> LinkProbe:
        """State from the PbxLinkChanged changes fed to ``calls.handle``."""

        async def probe() -> dict[str, Any]:
            state = self.calls.link_state.get(name)
            info: dict[str, Any] = {"kind": "pbx", "server": f"{host}:{port}"}
            if state is None:
                return {**info, "up": False, "detail": "no link state reported yet"}
            return {**info, "up": state.up, "detail": state.detail, "since": state.at}

        return probe

    @staticmethod
    def _unwired_probe(kind: str) -> LinkProbe:
        async def probe() -> dict[str, Any]:
            return {"kind": kind, "up": False, "detail": "configured, not connected"}

        return probe

    async def start(self) -> None:
        await migrate(self.engine)
        self.history.start()
        admin = self.settings.bootstrap_admin
        if admin is not None and await self.agents.count_admins() == 0:
            try:
                await self.agents.create(
                    admin.login, admin.password, name=admin.login, role=Role.ADMIN
                )
            except Conflict:
                # Another node starting on the same database created it first.
                if await self.agents.count_admins() == 0:
                    raise

    async def stop(self) -> None:
        await self.calls.close()
        await self.history.close()
        await self.engine.dispose()
