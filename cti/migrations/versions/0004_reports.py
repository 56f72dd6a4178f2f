"""reports (indexes and Asterisk record imports)

Revision ID: 0004_reports
Revises: 0003_callbacks

The reports read history events by channel and time, tag markings by kind,
and conversations by start time, by customer and start time (first contact
resolution) and by the call they were deflected from.
"""

from __future__ import annotations

from alembic import op

revision = "0004_reports"
down_revision = "0003_callbacks"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_history_channel_time", "history_events", ["channel", "occurred_at"]),
    ("ix_history_kind_conversation", "history_events", ["kind", "conversation_id"]),
    ("ix_conversations_queued_at", "conversations", ["queued_at"]),
    ("ix_conversations_customer_queued", "conversations", ["customer_id", "queued_at"]),
    ("ix_conversations_linked_to", "conversations", ["linked_to_id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
