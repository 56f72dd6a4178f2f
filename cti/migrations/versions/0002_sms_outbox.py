"""sms outbox (durable SMS queue with per-part SMSC ids)

Revision ID: 0002_sms_outbox
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sms_outbox"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sms_outbox",
        sa.Column("id", BigId, nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("destination", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("smsc_ids", sa.JSON(), nullable=False),
        sa.Column("part_states", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_sms_outbox_gateway_status", "sms_outbox", ["gateway", "status", "id"])
    op.create_table(
        "sms_outbox_parts",
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("part_index", sa.Integer(), nullable=False),
        sa.Column("smsc_id", sa.String(length=80), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["sms_outbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", "part_index"),
    )
    op.create_index("ix_sms_outbox_parts_smsc_id", "sms_outbox_parts", ["smsc_id"])


def downgrade() -> None:
    op.drop_index("ix_sms_outbox_parts_smsc_id", table_name="sms_outbox_parts")
    op.drop_table("sms_outbox_parts")
    op.drop_index("ix_sms_outbox_gateway_status", table_name="sms_outbox")
    op.drop_table("sms_outbox")
