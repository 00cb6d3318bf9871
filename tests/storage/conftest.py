"""Database fixtures: every storage test runs on SQLite (a temporary file) and on PostgreSQL.

PostgreSQL is ``LEWIS_TEST_DATABASE_URL`` if set, else ``postgres@127.0.0.1:5432/test``; the
session works in private databases (``lewis_test_<random>``) created here and dropped at the
end. Where no PostgreSQL answers, its half of each test is skipped with the reason shown
(``-ra``), never silently passed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from lewis_tasks.cli.db import upgrade_database as upgrade
from lewis_tasks.infra.config import DatabaseSettings
from lewis_tasks.infra.database import make_engine, parse_database_url
from lewis_tasks.storage.models import Base

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A URL of a reachable PostgreSQL server (its maintenance database), or a visible skip."""
    url = os.environ.get("LEWIS_TEST_DATABASE_URL") or DEFAULT_PG
    parsed = parse_database_url(url)
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach it means: skip, and say why
        shown = parsed.render_as_string(hide_password=True)
        pytest.skip(
            f"PostgreSQL unreachable at {shown}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
    finally:
        engine.dispose()
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database_factory(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty private databases on the server; drops them all when the session ends."""
    admin = create_engine(pg_server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"lewis_test_{secrets.token_hex(6)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_migrated_url(pg_database_factory: Callable[[], str]) -> str:
    """One private PostgreSQL database with the schema, shared by the session's tests."""
    url = pg_database_factory()
    upgrade(url)
    return url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with no tables at all, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'lewis.db'}"
    factory: Callable[[], str] = request.getfixturevalue("pg_database_factory")
    return factory()


def small_pool(url: str) -> DatabaseSettings:
    """Small pools: tests open few connections, and the server is shared."""
    return DatabaseSettings(url=url, pool_size=4, max_overflow=4, pool_timeout=10)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a migrated, empty database, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lewis.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_migrated_url")
    eng = make_engine(small_pool(url))
    try:
        yield eng
    finally:
        if request.param == "postgresql":  # the database is shared: leave it empty
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            with eng.begin() as conn:
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        eng.dispose()
