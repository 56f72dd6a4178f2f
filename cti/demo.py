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
# The IVR's caller identification by keyed reference and order status (cti/ivr_ports.py):
# the account number is the card's external_id, orders live in custom["orders"].
DEMO_ACCOUNTS: dict[str, tuple[str, list[dict[str, str]], str]] = {
    "Иван Петров": (
        "100200300",
        [
            {"id": "4711", "state": "delivered", "placed_at": "2026-10-02T09:15:00+00:00"},
            {"id": "5120", "state": "shipped", "placed_at": "2026-11-18T17:40:00+00:00"},
        ],
        "ru",
    ),
    "Анна Смирнова": (
        "100200301",
        [{"id": "5133", "state": "processing", "placed_at": "2026-11-20T08:05:00+00:00"}],
        "ru",
    ),
    "John Smith": ("100200302", [], "en"),
}
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
            account, orders, language = DEMO_ACCOUNTS[name]
            await services.customers.create(
                name,
                contacts,
                segment=segment,
                external_id=account,
                custom={"orders": orders, "language": language},
            )
        except Conflict:
            pass
    async with services.sessions() as session, session.begin():
        known = set(await session.scalars(select(WrapUpCode.code)))
        for code, label in DEMO_WRAP_UPS:
            if code not in known:
                session.add(WrapUpCode(code=code, label=label))
    return [(login, password) for login, password, _, _ in DEMO_AGENTS]
