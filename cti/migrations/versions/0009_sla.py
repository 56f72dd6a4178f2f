"""SLA timers

Revision ID: 0009_sla
Revises: 0008_history_timeline
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0009_sla"
down_revision = "0008_history_timeline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
