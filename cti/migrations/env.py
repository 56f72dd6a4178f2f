"""Alembic environment: runs on the connection cti.db.migrate hands in.

``alembic`` loads this file as module ``env_py``; a plain import (the
import-rule test imports every cti module) must do nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cti.models import Base


def run_migrations() -> None:
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through cti.db.migrate(engine)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if __name__ != "cti.migrations.env":
    run_migrations()
