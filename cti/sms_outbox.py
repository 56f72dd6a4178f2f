"""The SMS outbox on the cti database: ``sms_gateway.outbox.OutboxStore`` on SQLAlchemy.

Theory of operation: one row per outgoing message in ``sms_outbox`` (the
idempotency key is unique) and one row per acknowledged part in
``sms_outbox_parts`` holding the SMSC id normalised with
``receipts.normalize_id`` (indexed, so a delivery receipt finds its part with
one lookup). Every method commits before it returns: when the ESME has written
a part's SMSC id, a crash or restart never sends that part again, because
``unfinished()`` hands the stored ids back and the ESME only sends parts
without one. ``add`` is ``INSERT ... ON CONFLICT (key) DO NOTHING`` then a
``SELECT``, so two writers racing on the same key both get the one stored row.
``move`` (gateway failover, possibly decided on two nodes at once) is one
conditional ``UPDATE``: the row changes gateway only if it is still queued on
the old one and no part of it has an SMSC id, so it moves once and never after
a part was acknowledged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast, get_args

from sqlalchemy import JSON as SaJSON
from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    delete,
    exists,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from cti.models import Base, BigId, UtcDateTime, utcnow
from sms_gateway.mo import StoredPart
from sms_gateway.outbox import MessageStatus, OutboundSms
from sms_gateway.receipts import PartState, normalize_id

MAX_KEY = 128
MAX_PARTS_STORED = 255
_STATUSES = frozenset(get_args(MessageStatus))
_PART_STATES = frozenset(get_args(PartState))


class SmsOutboxRow(Base):
    __tablename__ = "sms_outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY), unique=True)
    destination: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    gateway: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    smsc_ids: Mapped[list[str | None]] = mapped_column(SaJSON, default=list)
    part_states: Mapped[list[str | None]] = mapped_column(SaJSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_sms_outbox_gateway_status", "gateway", "status", "id"),)


class SmsOutboxPart(Base):
    __tablename__ = "sms_outbox_parts"
    message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("sms_outbox.id", ondelete="CASCADE"), primary_key=True
    )
    part_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    smsc_id: Mapped[str] = mapped_column(String(80), index=True)


class OutboxDataError(ValueError):
    """A message that cannot be stored (too long a key, too many parts, bad status)."""


def _check(message: OutboundSms) -> None:
    if not message.key or len(message.key) > MAX_KEY:
        raise OutboxDataError(f"the idempotency key must have 1..{MAX_KEY} characters")
    if message.status not in _STATUSES:
        raise OutboxDataError(f"unknown status {message.status!r}")
    if len(message.smsc_ids) > MAX_PARTS_STORED or len(message.part_states) != len(
        message.smsc_ids
    ):
        raise OutboxDataError("part lists do not match or are too long")


def _to_message(row: SmsOutboxRow) -> OutboundSms:
    states = tuple(cast(PartState, s) if s in _PART_STATES else None for s in row.part_states or [])
    return OutboundSms(
        key=row.key,
        destination=row.destination,
        text=row.text,
        source=row.source,
        status=cast(MessageStatus, row.status),
        gateway=row.gateway,
        smsc_ids=tuple(row.smsc_ids or []),
        part_states=states,
        error=row.error,
    )


def _values(message: OutboundSms) -> dict[str, Any]:
    return {
        "destination": message.destination,
        "text": message.text,
        "source": message.source,
        "status": message.status,
        "gateway": message.gateway,
        "error": message.error,
        "smsc_ids": list(message.smsc_ids),
        "part_states": list(message.part_states),
    }


class DatabaseOutbox:
    """Durable ``OutboxStore``: every call has committed when it returns."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(self, message: OutboundSms) -> tuple[OutboundSms, bool]:
        _check(message)
        async with self._sessions() as session:
            dialect = session.bind.dialect.name if session.bind is not None else ""
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            now = utcnow()
            stmt = (
                insert(SmsOutboxRow)
                .values(key=message.key, created_at=now, updated_at=now, **_values(message))
                .on_conflict_do_nothing(index_elements=["key"])
            )
            result = await session.execute(stmt)
            await session.commit()
            created = bool(getattr(result, "rowcount", 0))
            row = await session.scalar(select(SmsOutboxRow).where(SmsOutboxRow.key == message.key))
            if row is None:  # pragma: no cover - the row was just inserted or existed
                raise RuntimeError(f"outbox row {message.key!r} vanished")
            return _to_message(row), created

    async def get(self, key: str) -> OutboundSms | None:
        async with self._sessions() as session:
            row = await session.scalar(select(SmsOutboxRow).where(SmsOutboxRow.key == key))
            return None if row is None else _to_message(row)

    async def update(self, message: OutboundSms) -> None:
        _check(message)
        async with self._sessions() as session, session.begin():
            row = await session.scalar(
                select(SmsOutboxRow).where(SmsOutboxRow.key == message.key).with_for_update()
            )
            if row is None:
                raise KeyError(message.key)
            for name, value in _values(message).items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            await session.execute(delete(SmsOutboxPart).where(SmsOutboxPart.message_id == row.id))
            session.add_all(
                SmsOutboxPart(message_id=row.id, part_index=index, smsc_id=normalize_id(sid))
                for index, sid in enumerate(message.smsc_ids)
                if sid is not None
            )

    async def move(self, message: OutboundSms, source: str) -> bool:
        """Compare-and-set: give the row of ``message.key`` to ``message.gateway`` (with
        the target's split in ``message``) if it is still ``queued`` on ``source`` and
        none of its parts reached the SMSC; True if this call moved it."""
        _check(message)
        if any(part is not None for part in message.smsc_ids):
            raise OutboxDataError("a moved message cannot carry SMSC ids")
        acknowledged = exists().where(SmsOutboxPart.message_id == SmsOutboxRow.id)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(SmsOutboxRow)
                .where(SmsOutboxRow.key == message.key, SmsOutboxRow.gateway == source,
                       SmsOutboxRow.status == "queued", ~acknowledged)
                .values(gateway=message.gateway, destination=message.destination,
                        source=message.source, smsc_ids=list(message.smsc_ids),
                        part_states=list(message.part_states), error="",
                        updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0) == 1)

    async def unfinished(self, gateway: str) -> list[OutboundSms]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SmsOutboxRow)
                .where(SmsOutboxRow.gateway == gateway, SmsOutboxRow.status == "queued")
                .order_by(SmsOutboxRow.id)
            )
            return [_to_message(row) for row in rows]

    async def find_by_smsc_id(self, smsc_id: str) -> tuple[OutboundSms, int] | None:
        wanted = normalize_id(smsc_id)
        if not wanted or len(wanted) > 80:
            return None
        async with self._sessions() as session:
            found = (
                await session.execute(
                    select(SmsOutboxRow, SmsOutboxPart.part_index)
                    .join(SmsOutboxPart, SmsOutboxPart.message_id == SmsOutboxRow.id)
                    .where(SmsOutboxPart.smsc_id == wanted)
                    .order_by(SmsOutboxRow.id.desc())
                    .limit(1)
                )
            ).first()
            if found is None:
                return None
            return _to_message(found[0]), int(found[1])


class SmsMoPart(Base):
    """A part of a multipart MO message the ESME acknowledged, waiting for the rest."""

    __tablename__ = "sms_mo_parts"
    __table_args__ = (
        UniqueConstraint("link", "source", "destination", "reference", "total", "sequence",
                         name="uq_sms_mo_parts_part"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    link: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(String(32))
    reference: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(Integer)
    data_coding: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[float] = mapped_column(Float)


MAX_MO_PART_BYTES = 1024  # a short_message is at most 254 octets, message_payload more


class DatabaseMoParts:
    """``sms_gateway.mo.MoPartStore`` on the cti database (every call has committed)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def save(self, link: str, part: StoredPart) -> None:
        if (len(part.payload) > MAX_MO_PART_BYTES or len(part.source) > 32
                or len(part.destination) > 32 or len(link) > 64):
            raise OutboxDataError("MO part too large to keep")
        async with self._sessions() as session:
            dialect = session.bind.dialect.name if session.bind is not None else ""
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await session.execute(
                insert(SmsMoPart)
                .values(link=link, source=part.source, destination=part.destination,
                        reference=part.reference, total=part.total, sequence=part.sequence,
                        data_coding=part.data_coding, payload=part.payload,
                        received_at=part.received_at)
                .on_conflict_do_nothing(index_elements=[
                    "link", "source", "destination", "reference", "total", "sequence"])
            )
            await session.commit()

    async def forget(
        self, link: str, source: str, destination: str, reference: int, total: int
    ) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(delete(SmsMoPart).where(
                SmsMoPart.link == link, SmsMoPart.source == source,
                SmsMoPart.destination == destination, SmsMoPart.reference == reference,
                SmsMoPart.total == total))

    async def pending(self, link: str) -> list[StoredPart]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SmsMoPart).where(SmsMoPart.link == link).order_by(SmsMoPart.id))
            return [StoredPart(r.source, r.destination, r.reference, r.total, r.sequence,
                               r.data_coding, bytes(r.payload), r.received_at) for r in rows]
