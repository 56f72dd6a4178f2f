"""history timeline index

Revision ID: 0008_history_timeline
Revises: 0007_report_columns
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0008_history_timeline"
down_revision = "0007_report_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
