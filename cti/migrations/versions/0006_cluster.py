"""several nodes (leases, partitioning)

Revision ID: 0006_cluster
Revises: 0005_sms_mo_parts
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0006_cluster"
down_revision = "0005_sms_mo_parts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
