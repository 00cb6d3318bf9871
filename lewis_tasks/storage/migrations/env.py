"""Alembic environment for LEWIS: run by :mod:`lewis_tasks.storage.migrate`, no alembic.ini.

The caller hands over an open connection in ``config.attributes["connection"]``. On
PostgreSQL an advisory lock serialises concurrent upgrades (two hosts starting at once);
SQLite's ``BEGIN IMMEDIATE`` does the same there. SQLite gets batch mode, since it cannot
ALTER most things in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from lewis_tasks.storage.models import Base

# Any constant will do, as long as nothing else in the database uses it: "LEWISMIG".
_PG_LOCK = 0x4C45574953

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only migrate.py drives this environment
    raise RuntimeError("run migrations through lewis_tasks.storage.migrate (lewis db upgrade)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    context.run_migrations()
