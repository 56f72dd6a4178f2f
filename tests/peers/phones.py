"""pjsua2 phones for the tests: agent phones registered with the lab PBX, customer UAs.

One pjsua2 engine per pytest process (``softphone_engine``, session scope),
shut down at session end so pytest exits cleanly. Every phone a test makes is
closed when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cti.softphone import SoftPhone
from cti.softphone.engine import get_engine_blocking, shutdown_engine_blocking


@pytest.fixture(scope="session")
def softphone_engine() -> Iterator[None]:
    """Start the process pjsua2 engine; destroy it (and every pjsua2 object) at session end."""
    try:
        get_engine_blocking()
    except Exception as exc:
        pytest.fail(f"pjsua2 engine cannot start (is pjsua2-python installed?): {exc}")
    yield
    shutdown_engine_blocking()


class PhoneFactory:
    """``await phone_factory("agent1")`` -> a SoftPhone registered with the lab PBX.

    ``await phone_factory.customer(port)`` -> an unregistered customer phone
    listening on 127.0.0.1:port (port 0 or None: any free port; read ``phone.local_port``).
    """

    def __init__(self, lab_pbx: Any | None) -> None:
        self._lab = lab_pbx
        self.phones: list[SoftPhone] = []

    async def __call__(self, login: str, *, auto_answer: bool = False,
                       display_name: str | None = None) -> SoftPhone:
        lab = self._lab
        if lab is None:
            raise RuntimeError("phone_factory needs the lab PBX (fixture lab_pbx)")
        agents: dict[str, str] = dict(lab.agents)
        if login not in agents:
            raise KeyError(f"{login!r} is not an agent of the lab PBX ({sorted(agents)})")
        phone = await SoftPhone.create(
            username=login, password=agents[login], host=str(lab.host), port=int(lab.sip_port),
            display_name=display_name, auto_answer=auto_answer, register_timeout=15.0,
        )
        self.phones.append(phone)
        return phone

    async def customer(self, port: int | None = None, *, username: str = "customer",
                       display_name: str | None = None,
                       auto_answer: bool = False) -> SoftPhone:
        phone = await SoftPhone.create_unregistered(
            local_port=port or 0, username=username,
            display_name=display_name, auto_answer=auto_answer,
        )
        self.phones.append(phone)
        return phone

    async def close_all(self) -> None:
        phones, self.phones = self.phones, []
        for phone in phones:
            await phone.close()


@pytest.fixture
async def customer_phone_factory(softphone_engine: None) -> AsyncIterator[PhoneFactory]:
    """Unregistered UAs only (no PBX): ``await customer_phone_factory.customer(port)``."""
    factory = PhoneFactory(None)
    yield factory
    await factory.close_all()


@pytest.fixture
async def phone_factory(softphone_engine: None, lab_pbx: Any) -> AsyncIterator[PhoneFactory]:
    """Agent phones registered with the lab PBX, plus ``.customer(port)`` phones."""
    factory = PhoneFactory(lab_pbx)
    yield factory
    await factory.close_all()
