"""report columns (numeric values the reports aggregate)

Revision ID: 0007_report_columns
Revises: 0006_cluster

The reports summed and compared durations extracted from each history row's
JSON payload; over a 30-day period of a 10M-row history that extraction was
most of a report's time. The durations now also live in plain numeric columns
(filled on insert by the model's defaults, see cti/reports/columns.py, and
backfilled here with the same rule: a JSON number becomes a float, anything
else NULL). The index the reports scan, by channel and time, now also holds
the kind, the conversation and the durations, so a voice or text report reads
the index alone, never the wide rows with their payloads; it replaces
``ix_history_channel_time`` (same leading columns).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_report_columns"
down_revision = "0006_cluster"
branch_labels = None
depends_on = None

COLUMNS = {"wait_s": "wait", "talk_s": "talk", "hold_s": "hold", "ring_s": "ring"}
REPORT_INDEX = (
    "ix_history_report",
    ["channel", "occurred_at", "kind", "conversation_id", "wait_s", "talk_s", "hold_s"],
)


def _number(dialect: str, key: str) -> str:
    """SQL for the payload's ``key`` as a float when it is a JSON number, else NULL."""
    if dialect == "postgresql":
        return (
            f"CASE WHEN json_typeof(payload -> '{key}') = 'number' "
            f"THEN CAST(payload ->> '{key}' AS DOUBLE PRECISION) END"
        )
    return (
        f"CASE WHEN json_type(payload, '$.\"{key}\"') IN ('integer', 'real') "
        f"THEN CAST(json_extract(payload, '$.\"{key}\"') AS REAL) END"
    )


def upgrade() -> None:
    with op.batch_alter_table("history_events") as batch:
        for column in COLUMNS:
            batch.add_column(sa.Column(column, sa.Float(), nullable=True))
    dialect = op.get_bind().dialect.name
    values = {column: _number(dialect, key) for column, key in COLUMNS.items()}
    assignments = ", ".join(f"{column} = {sql}" for column, sql in values.items())
    any_number = " OR ".join(f"({sql}) IS NOT NULL" for sql in values.values())
    op.execute(f"UPDATE history_events SET {assignments} WHERE {any_number}")
    op.drop_index("ix_history_channel_time", table_name="history_events")
    op.create_index(REPORT_INDEX[0], "history_events", REPORT_INDEX[1])


def downgrade() -> None:
    op.drop_index(REPORT_INDEX[0], table_name="history_events")
    op.create_index("ix_history_channel_time", "history_events", ["channel", "occurred_at"])
    with op.batch_alter_table("history_events") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
