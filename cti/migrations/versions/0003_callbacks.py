"""callback bookings (virtual place in line)

Revision ID: 0003_callbacks
Revises: 0002_sms_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_callbacks"
down_revision = "0002_sms_outbox"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "callback_bookings",
        sa.Column("id", BigId, nullable=False),
        sa.Column("call_id", sa.String(length=160), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("queue_entry_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", BigId, nullable=False),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_result", sa.String(length=64), nullable=False),
        sa.Column("pbx", sa.String(length=64), nullable=True),
        sa.Column("agent_interface", sa.String(length=128), nullable=True),
        sa.Column("dial_call_id", sa.String(length=200), nullable=True),
        sa.Column("dial_conversation_id", BigId, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"]),
        sa.ForeignKeyConstraint(["dial_conversation_id"], ["conversations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("call_id"),
    )
    op.create_index(
        "ix_callback_bookings_status_entry",
        "callback_bookings",
        ["status", "queue_entry_time"],
    )
    op.create_index("ix_callback_bookings_customer_id", "callback_bookings", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_callback_bookings_customer_id", table_name="callback_bookings")
    op.drop_index("ix_callback_bookings_status_entry", table_name="callback_bookings")
    op.drop_table("callback_bookings")
