"""Schema migrations (Alembic), driven from code: ``lewis db upgrade`` and ``lewis up`` call
:func:`upgrade`. The migration scripts ship inside the package, so an installed copy migrates
without an alembic.ini or a source checkout.

Each function takes the engine to migrate (``infra.database.one_shot_engine(url)`` makes one
from a URL, configured like every other: on SQLite ``BEGIN IMMEDIATE`` serialises two upgrades).
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
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StorageError
from .db import describe_error, error_kind
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


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring ``engine``'s database up to ``revision``; returns the revision it is at.

    Running it again is a no-op. Errors come out as StorageError with a readable message.
    """
    with _connection(engine) as conn:
        command.upgrade(alembic_config(conn), revision)
        return MigrationContext.configure(conn).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with _connection(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_diff(engine: Engine) -> list[Any]:
    """Differences between the database's schema and the models; ``[]`` when they agree."""
    with _connection(engine) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


@contextmanager
def _connection(engine: Engine) -> Iterator[Connection]:
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise error_kind(exc)(describe_error(exc, url)) from exc
    except CommandError as exc:
        raise StorageError(f"migration of {url} failed: {exc}") from exc


__all__ = [
    "upgrade",
    "current_revision",
    "head_revision",
    "schema_diff",
    "alembic_config",
    "MIGRATIONS",
]
