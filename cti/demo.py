"""Demo data for ``cti serve --demo``: agents with known passwords and a few customers."""

from __future__ import annotations

from sqlalchemy import select

from cti.auth import Role
from cti.customers import ContactInput
from cti.errors import Conflict
from cti.models import WrapUpCode
from cti.services import Services

DEMO_AGENTS: tuple[tuple[str, str, Role, str | None], ...] = (
    ("agent1", "agent1-pass", Role.AGENT, "PJSIP/agent1"),
    ("agent2", "agent2-pass", Role.AGENT, "PJSIP/agent2"),
    ("agent3", "agent3-pass", Role.AGENT, "PJSIP/agent3"),
    ("agent4", "agent4-pass", Role.AGENT, "PJSIP/agent4"),
    ("supervisor", "supervisor-pass", Role.SUPERVISOR, None),
    ("admin", "admin-pass", Role.ADMIN, None),
)
DEMO_CUSTOMERS: tuple[tuple[str, list[ContactInput], str], ...] = (
    ("Иван Петров", [ContactInput("phone", "+79161234567")], "vip"),
    (
        "Анна Смирнова",
        [ContactInput("phone", "+79035550101"), ContactInput("email", "anna@example.org")],
        "regular",
    ),
    ("John Smith", [ContactInput("phone", "+442079460123")], "regular"),
)
DEMO_WRAP_UPS = (
    ("resolved", "Resolved"),
    ("callback", "Callback needed"),
    ("complaint", "Complaint"),
)


async def seed(services: Services) -> list[tuple[str, str]]:
    """Create what is missing; returns the demo (login, password) pairs."""
    for login, password, role, endpoint in DEMO_AGENTS:
        if await services.agents.by_login(login) is None:
            await services.agents.create(
                login,
                password,
                name=login.title(),
                role=role,
                endpoint=endpoint,
                queues=["support"] if role is Role.AGENT else [],
                skills=["ru", "en"] if role is Role.AGENT else [],
            )
    for name, contacts, segment in DEMO_CUSTOMERS:
        try:
            await services.customers.create(name, contacts, segment=segment)
        except Conflict:
            pass
    async with services.sessions() as session, session.begin():
        known = set(await session.scalars(select(WrapUpCode.code)))
        for code, label in DEMO_WRAP_UPS:
            if code not in known:
                session.add(WrapUpCode(code=code, label=label))
    return [(login, password) for login, password, _, _ in DEMO_AGENTS]
