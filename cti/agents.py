"""Agents, supervisors and admins: accounts, passwords, endpoints.

``by_endpoint`` answers from memory: every AMI change that names an agent's
interface (each CallOffered screen-pop, each queue member status) asks it, and
a query each time took a pool connection on the pop path (under load: waits
of 250 ms for a free one). Every agent with an endpoint is read in one query
at first use and again every ENDPOINT_TTL seconds (in the background: callers
get the map meanwhile). An endpoint not in the map is read on its own (an
agent created since, maybe on another node sharing the database); a miss is
remembered for MISS_TTL seconds. ``create`` on this node updates the map at
once. Agents are never deleted and their endpoint never changes through the
API; the cached row's ``id``, ``login`` and ``endpoint`` are what callers use
(read ``available`` with ``get``: pause changes do not go through here).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cti.auth import Principal, Role, TokenSigner, hash_password, verify_password
from cti.errors import Conflict, InvalidInput, NotFound, Unauthorized
from cti.models import Agent

LOGIN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
ENDPOINT = re.compile(r"^[A-Za-z0-9]+/[A-Za-z0-9_.@+-]{1,100}$")
ENDPOINT_TTL = 30.0
MISS_TTL = 2.0
MAX_MISSES = 10_000


def agent_json(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "login": agent.login,
        "name": agent.name,
        "role": agent.role,
        "endpoint": agent.endpoint,
        "queues": agent.queues,
        "skills": agent.skills,
        "max_text": agent.max_text,
        "available": agent.available,
    }


class AgentService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], signer: TokenSigner, max_text: int
    ) -> None:
        self._sessions = sessions
        self._signer = signer
        self._max_text = max_text
        # endpoint -> agent, all read at _loaded_at (monotonic); endpoints read
        # and found to be no agent's -> when
        self._by_endpoint: dict[str, Agent] = {}
        self._loaded_at = float("-inf")
        self._misses: dict[str, float] = {}
        self._reload: asyncio.Task[None] | None = None
        self._generation = 0
        self.endpoint_reads = 0

    async def create(
        self,
        login: str,
        password: str,
        *,
        name: str = "",
        role: Role = Role.AGENT,
        endpoint: str | None = None,
        queues: list[str] | None = None,
        skills: list[str] | None = None,
        max_text: int | None = None,
    ) -> Agent:
        if not LOGIN.match(login):
            raise InvalidInput("login: 1..64 letters, digits, _ . @ -", field="login")
        if not 8 <= len(password) <= 256:
            raise InvalidInput("password: 8..256 characters", field="password")
        if endpoint is not None and not ENDPOINT.match(endpoint):
            raise InvalidInput("endpoint: TECH/resource, e.g. PJSIP/agent1", field="endpoint")
        password_hash = await asyncio.to_thread(hash_password, password)
        agent = Agent(
            login=login,
            name=name[:200],
            password_hash=password_hash,
            role=role.value,
            endpoint=endpoint,
            queues=queues or [],
            skills=skills or [],
            max_text=self._max_text if max_text is None else max_text,
            available=True,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(agent)
        except IntegrityError:
            raise Conflict(
                "an agent with this login or endpoint exists", login=login, endpoint=endpoint
            ) from None
        if endpoint is not None:
            self.forget_endpoint(endpoint)
        return agent

    async def count_admins(self) -> int:
        async with self._sessions() as session:
            n = await session.scalar(
                select(func.count()).select_from(Agent).where(Agent.role == Role.ADMIN.value)
            )
            return int(n or 0)

    async def get(self, agent_id: int) -> Agent:
        async with self._sessions() as session:
            agent = await session.get(Agent, agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id} does not exist", agent_id=agent_id)
        return agent

    async def by_login(self, login: str) -> Agent | None:
        async with self._sessions() as session:
            return await session.scalar(select(Agent).where(Agent.login == login))

    async def by_endpoint(self, endpoint: str) -> Agent | None:
        """The agent with this SIP endpoint (from memory, see the module docstring)."""
        now = time.monotonic()
        if now - self._loaded_at > ENDPOINT_TTL:
            if self._loaded_at == float("-inf"):
                await self._load_endpoints()
            elif self._reload is None or self._reload.done():
                # Stale: answered from memory while one task reads the table again.
                self._reload = asyncio.create_task(self._load_endpoints(), name="agents-reload")
        agent = self._by_endpoint.get(endpoint)
        if agent is not None:
            return agent
        missed = self._misses.get(endpoint)
        if missed is not None and now - missed < MISS_TTL:
            return None
        # Not in the map: created since (maybe on another node) or not an agent.
        self.endpoint_reads += 1
        generation = self._generation
        async with self._sessions() as session:
            agent = await session.scalar(select(Agent).where(Agent.endpoint == endpoint))
        if generation == self._generation:  # else changed while we read: keep nothing
            if agent is not None:
                self._by_endpoint[endpoint] = agent
                self._misses.pop(endpoint, None)
            else:
                if len(self._misses) >= MAX_MISSES:
                    self._misses.clear()
                self._misses[endpoint] = now
        return agent

    async def _load_endpoints(self) -> None:
        self.endpoint_reads += 1
        started = time.monotonic()
        async with self._sessions() as session:
            rows = await session.scalars(select(Agent).where(Agent.endpoint.is_not(None)))
            loaded = {a.endpoint: a for a in rows if a.endpoint is not None}
        self._by_endpoint = loaded
        self._misses.clear()
        self._loaded_at = started

    def forget_endpoint(self, endpoint: str | None = None) -> None:
        """Drop one endpoint's cached agent (None: all), e.g. after changing it."""
        self._generation += 1
        if endpoint is None:
            self._by_endpoint.clear()
            self._misses.clear()
            self._loaded_at = float("-inf")
        else:
            self._by_endpoint.pop(endpoint, None)
            self._misses.pop(endpoint, None)

    async def issue_token(self, login: str, password: str) -> str:
        agent = await self.by_login(login) if LOGIN.match(login) else None
        ok = await asyncio.to_thread(
            verify_password, agent.password_hash if agent else None, password
        )
        if agent is None or not ok:
            raise Unauthorized("wrong login or password")
        return self._signer.issue(Principal(agent.id, Role(agent.role)))

    def authenticate(self, token: str) -> Principal:
        return self._signer.verify(token)
