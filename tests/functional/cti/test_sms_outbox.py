"""The database SMS outbox (cti.sms_outbox) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from cti.db import alembic_config, create_engine, migrate, sessionmaker
from cti.sms_outbox import DatabaseOutbox, OutboxDataError
from sms_gateway.esme import SmppClient, SmppConfig
from sms_gateway.outbox import OutboundSms
from tests.peers.smsc import Smsc


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url)
    await migrate(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


def message(key: str, parts: int = 2, gateway: str = "smpp1") -> OutboundSms:
    return OutboundSms(
        key=key,
        destination="79161234567",
        text="Привет " * parts,
        source="CTI",
        gateway=gateway,
        smsc_ids=(None,) * parts,
        part_states=(None,) * parts,
    )


def test_migrations_have_a_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, heads


async def test_add_is_idempotent_even_when_racing(engine: AsyncEngine) -> None:
    outbox = DatabaseOutbox(sessionmaker(engine))
    results = await asyncio.gather(*(outbox.add(message("k1")) for _ in range(5)))
    assert sum(created for _, created in results) == 1
    assert {m for m, _ in results} == {message("k1")}
    stored, created = await outbox.add(replace(message("k1"), text="other text"))
    assert not created and stored.text == message("k1").text


async def test_part_ids_and_states_survive_a_new_engine(db_url: str, engine: AsyncEngine) -> None:
    outbox = DatabaseOutbox(sessionmaker(engine))
    await outbox.add(message("a", parts=3))
    await outbox.add(message("other-gw", gateway="smpp2"))
    await outbox.add(message("b"))
    sent = (await outbox.get("a") or message("x")).with_part_submitted(0, "0001A")
    sent = sent.with_part_state(0, "delivered")
    await outbox.update(sent)
    await engine.dispose()

    fresh = create_engine(db_url)
    try:
        reopened = DatabaseOutbox(sessionmaker(fresh))
        assert await reopened.get("a") == sent
        assert [m.key for m in await reopened.unfinished("smpp1")] == ["a", "b"]
        assert [m.key for m in await reopened.unfinished("smpp2")] == ["other-gw"]
        # The id is matched normalised (case, leading zeros), as receipts give it.
        assert await reopened.find_by_smsc_id("1a") == (sent, 0)
        assert await reopened.find_by_smsc_id("0001a") == (sent, 0)
        assert await reopened.find_by_smsc_id("1b") is None
        assert await reopened.find_by_smsc_id("") is None
        done = replace(sent.with_part_submitted(1, "1B").with_part_submitted(2, "1C"))
        await reopened.update(replace(done, status="submitted"))
        assert [m.key for m in await reopened.unfinished("smpp1")] == ["b"]
        assert await reopened.find_by_smsc_id("1C") == (replace(done, status="submitted"), 2)
    finally:
        await fresh.dispose()


async def test_bad_messages_are_refused(engine: AsyncEngine) -> None:
    outbox = DatabaseOutbox(sessionmaker(engine))
    with pytest.raises(OutboxDataError):
        await outbox.add(message("k" * 129))
    with pytest.raises(OutboxDataError):
        await outbox.add(replace(message("k"), part_states=(None,)))
    with pytest.raises(KeyError):
        await outbox.update(message("never-added"))
    assert await outbox.get("k") is None


@pytest.mark.integration
async def test_restarted_esme_sends_only_unacknowledged_parts(
    db_url: str, engine: AsyncEngine, smsc: Smsc
) -> None:
    # The state a crash leaves behind right after part 1's submit_sm_resp was stored.
    outbox = DatabaseOutbox(sessionmaker(engine))
    text = "Ваш заказ готов к выдаче. " * 7  # 182 characters: 3 UCS-2 parts
    crashed = OutboundSms(
        key="c1-restart",
        destination="79161234567",
        text=text,
        source="CTI",
        gateway="smpp1",
        smsc_ids=("FFFF0", None, None),
        part_states=(None, None, None),
    )
    await outbox.add(crashed)
    await outbox.update(crashed)
    await engine.dispose()

    fresh = create_engine(db_url)
    config = SmppConfig.from_url(smsc.url(name="smpp1", reconnect_min=0.2))
    statuses: list[str] = []

    async def on_status(message: OutboundSms) -> None:
        statuses.append(message.status)

    client = SmppClient(config, DatabaseOutbox(sessionmaker(fresh)), on_status=on_status)
    await client.start()
    try:
        deadline = time.monotonic() + 30
        while "submitted" not in statuses:
            assert time.monotonic() < deadline, "the restarted ESME never finished the message"
            await asyncio.sleep(0.05)
        submits = [s for s in smsc.recorded_submits() if s["text"] in text]
        assert sorted(s["udh"]["seq"] for s in submits) == [2, 3]
        stored = await DatabaseOutbox(sessionmaker(fresh)).get("c1-restart")
        assert stored is not None and stored.status == "submitted"
        assert stored.smsc_ids[0] == "FFFF0"
        new_ids = sorted(str(i) for i in stored.smsc_ids[1:])
        assert new_ids == sorted(s["message_id"] for s in submits)
    finally:
        await client.stop()
        await fresh.dispose()
