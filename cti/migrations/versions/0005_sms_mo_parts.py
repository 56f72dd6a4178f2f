"""durable MO parts awaiting reassembly

Revision ID: 0005_sms_mo_parts
Revises: 0004_reports
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0005_sms_mo_parts"
down_revision = "0004_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
