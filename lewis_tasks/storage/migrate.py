"""Schema migrations (Alembic), driven from code: ``lewis db upgrade`` and ``lewis up`` call
:func:`upgrade`. The migration scripts ship inside the package, so an installed copy migrates
without an alembic.ini or a source checkout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StorageError
from ..infra.config import DatabaseSettings, redact_url
from .db import describe_error, error_kind, make_engine
from .models import Base

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (and at ``connection`` if given)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration scripts shipped"
    return head


def upgrade(database_url: str, revision: str = "head") -> str | None:
    """Bring the database at ``database_url`` up to ``revision``; returns the revision it is at.

    Running it again is a no-op. Errors come out as StorageError with a readable message.
    """
    with _connection(database_url) as conn:
        command.upgrade(alembic_config(conn), revision)
        return MigrationContext.configure(conn).get_current_revision()


def current_revision(database_url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with _connection(database_url) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_diff(database_url: str) -> list[Any]:
    """Differences between the database's schema and the models; ``[]`` when they agree."""
    with _connection(database_url) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


@contextmanager
def _connection(database_url: str) -> Iterator[Connection]:
    engine = make_engine(DatabaseSettings(url=database_url), pooled=False)
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise error_kind(exc)(describe_error(exc, redact_url(database_url))) from exc
    except CommandError as exc:
        raise StorageError(f"migration of {redact_url(database_url)} failed: {exc}") from exc
    finally:
        engine.dispose()


__all__ = [
    "upgrade",
    "current_revision",
    "head_revision",
    "schema_diff",
    "alembic_config",
    "MIGRATIONS",
]
