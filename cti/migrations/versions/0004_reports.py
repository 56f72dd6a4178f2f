"""reports (indexes and Asterisk record imports)

Revision ID: 0004_reports
Revises: 0003_callbacks
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_reports"
down_revision = "0003_callbacks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
