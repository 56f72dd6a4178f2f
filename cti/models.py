"""The data model (SQLAlchemy 2). The Alembic migration in cti/migrations mirrors it.

Merging keeps rows where they are: the merged customer points at the survivor
with ``merged_into_id``, its identities resolve to the survivor and the
survivor's timeline reads every merged customer's history. Undo clears the
pointer, so an undo never has to move millions of history rows back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cti.reports.columns import report_value

BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    segment: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    notes: Mapped[str] = mapped_column(Text, default="")
    external_id: Mapped[str | None] = mapped_column(String(128), index=True)
    custom: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    merged_into_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("customers.id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class Identity(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_identities_kind_value"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(256))
    raw: Mapped[str] = mapped_column(String(256))
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="agent")
    endpoint: Mapped[str | None] = mapped_column(String(128), unique=True)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_text: Mapped[int] = mapped_column(Integer, default=3)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_owner_status", "owner_id", "status"),
        Index("ix_conversations_status_queued", "status", "queued_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str | None] = mapped_column(String(64))
    skill: Mapped[str | None] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    contact: Mapped[str] = mapped_column(String(256), default="")
    owner_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("agents.id"))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    wrap_up_code: Mapped[str | None] = mapped_column(String(64))
    external_ref: Mapped[str | None] = mapped_column(String(160), unique=True)
    linked_to_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("conversations.id"))
    queued_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


def _from_payload(column: str) -> Callable[[DefaultExecutionContext], float | None]:
    """A context-sensitive default: every Core or ORM insert fills the column."""

    def fill(context: DefaultExecutionContext) -> float | None:
        params: dict[str, Any] = context.get_current_parameters()  # type: ignore[no-untyped-call]
        return report_value(column, params)

    return fill


class HistoryEvent(Base):
    __tablename__ = "history_events"
    __table_args__ = (
        Index("ix_history_timeline", "customer_id", "occurred_at", "id"),
        Index("ix_history_conversation", "conversation_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"))
    conversation_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("conversations.id"))
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(8))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedup_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # What the reports aggregate, copied from the payload on insert (cti/reports/columns.py).
    wait_s: Mapped[float | None] = mapped_column(Float, default=_from_payload("wait_s"))
    talk_s: Mapped[float | None] = mapped_column(Float, default=_from_payload("talk_s"))
    hold_s: Mapped[float | None] = mapped_column(Float, default=_from_payload("hold_s"))
    ring_s: Mapped[float | None] = mapped_column(Float, default=_from_payload("ring_s"))


class CustomerMerge(Base):
    __tablename__ = "customer_merges"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    target_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    actor_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("agents.id"))
    target_before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    merged_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Template(Base):
    __tablename__ = "templates"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    channel: Mapped[str | None] = mapped_column(String(8))
    body: Mapped[str] = mapped_column(Text)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class WrapUpCode(Base):
    __tablename__ = "wrap_up_codes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")


class CallbackBookingRow(Base):
    """A caller's virtual place in line: call them back when their turn comes (cti.callbacks)."""

    __tablename__ = "callback_bookings"
    __table_args__ = (Index("ix_callback_bookings_status_entry", "status", "queue_entry_time"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    call_id: Mapped[str] = mapped_column(String(160), unique=True)
    number: Mapped[str] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(64))
    queue_entry_time: Mapped[datetime] = mapped_column(UtcDateTime)
    customer_id: Mapped[int] = mapped_column(BigId, ForeignKey("customers.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("conversations.id"))
    language: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_result: Mapped[str] = mapped_column(String(64), default="")
    pbx: Mapped[str | None] = mapped_column(String(64))
    agent_interface: Mapped[str | None] = mapped_column(String(128))
    dial_call_id: Mapped[str | None] = mapped_column(String(200))
    dial_conversation_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("conversations.id")
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
