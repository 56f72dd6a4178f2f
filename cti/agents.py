"""Agents, supervisors and admins: accounts, passwords, endpoints."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cti.auth import Principal, Role, TokenSigner, hash_password, verify_password
from cti.errors import Conflict, InvalidInput, NotFound, Unauthorized
from cti.models import Agent

LOGIN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
ENDPOINT = re.compile(r"^[A-Za-z0-9]+/[A-Za-z0-9_.@+-]{1,100}$")


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
        self._by_endpoint: dict[str, int] = {}

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
        async with self._sessions() as session:
            return await session.scalar(select(Agent).where(Agent.endpoint == endpoint))

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
