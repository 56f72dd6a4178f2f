"""durable MO parts awaiting reassembly

Revision ID: 0005_sms_mo_parts
Revises: 0004_reports
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_sms_mo_parts"
down_revision = "0004_reports"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sms_mo_parts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("link", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("data_coding", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("link", "source", "destination", "reference", "total", "sequence",
                            name="uq_sms_mo_parts_part"),
    )


def downgrade() -> None:
    op.drop_table("sms_mo_parts")
