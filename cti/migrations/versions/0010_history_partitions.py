"""PostgreSQL: history partitioned by month

Revision ID: 0010_history_partitions
Revises: 0009_sla

On PostgreSQL history_events becomes PARTITIONED BY RANGE (occurred_at), one
partition per month (from the oldest row's month to MONTHS_AHEAD months ahead)
plus a DEFAULT partition; the primary key becomes (id, occurred_at) and
UNIQUE(dedup_key) becomes the history_dedup table and its triggers (see
cti.partitions). Every other index and foreign key is carried over as found in
the catalog. The rows are copied in one statement under an ACCESS EXCLUSIVE
lock: seconds for a small install, a maintenance window for a big one
(docs/cluster.md). SQLite: nothing changes.
"""

from __future__ import annotations

from alembic import op

from cti.partitions import convert_history, unpartition_history

revision = "0010_history_partitions"
down_revision = "0009_sla"
branch_labels = None
depends_on = None


def upgrade() -> None:
    convert_history(op.get_bind())


def downgrade() -> None:
    unpartition_history(op.get_bind())
