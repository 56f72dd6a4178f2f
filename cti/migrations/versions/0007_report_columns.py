"""report columns (numeric values the reports aggregate)

Revision ID: 0007_report_columns
Revises: 0006_cluster
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0007_report_columns"
down_revision = "0006_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
