"""Alembic migrations, shipped inside the package (see cti.db.migrate)."""
