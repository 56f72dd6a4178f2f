"""callback bookings (virtual place in line)

Revision ID: 0003_callbacks
Revises: 0002_sms_outbox
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0003_callbacks"
down_revision = "0002_sms_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
