"""PostgreSQL: history partitioned by month

Revision ID: 0010_history_partitions
Revises: 0009_sla
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0010_history_partitions"
down_revision = "0009_sla"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
