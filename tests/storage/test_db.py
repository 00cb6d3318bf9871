"""Engines and sessions: pool and SQLite settings, commit/rollback, readable errors, fork safety."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from lewis_tasks.errors import ConfigError, StorageError
from lewis_tasks.infra import database
from lewis_tasks.infra.config import DatabaseSettings
from lewis_tasks.storage import db
from lewis_tasks.storage.models import ScanRow


def test_sqlite_engine_uses_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    # Given a SQLite URL whose directory does not exist yet
    path = tmp_path / "deep" / "er" / "lewis.db"
    engine = database.make_engine(DatabaseSettings(url=f"sqlite:///{path}", pool_timeout=7))
    try:
        with engine.connect() as conn:
            # Then the directory was made and every connection is configured
            assert path.parent.is_dir()
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
    finally:
        engine.dispose()


def test_server_engine_gets_the_pool_settings(pg_migrated_url: str) -> None:
    settings = DatabaseSettings(
        url=pg_migrated_url,
        pool_size=3,
        max_overflow=5,
        pool_timeout=9,
        pool_recycle=1234,
        echo_sql=True,
    )
    engine = database.make_engine(settings)
    try:
        pool = engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 5  # type: ignore[attr-defined]
        assert pool._timeout == 9  # type: ignore[attr-defined]
        assert pool._recycle == 1234
        assert pool._pre_ping is True
        assert engine.echo is True
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_bare_postgresql_url_means_psycopg3() -> None:
    assert (
        database.parse_database_url("postgresql://u@127.0.0.1/x").drivername == "postgresql+psycopg"
    )
    with pytest.raises(ConfigError, match="not a database URL"):
        database.parse_database_url("not a url")


def test_session_scope_commits_or_rolls_back(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    with db.session_scope(engine) as session:
        session.add(ScanRow(id="kept", created_at=now))
    with pytest.raises(RuntimeError), db.session_scope(engine) as session:
        session.add(ScanRow(id="dropped", created_at=now))
        session.flush()
        raise RuntimeError("caller failed")
    with db.session_scope(engine) as session:
        assert session.scalars(select(ScanRow.id)).all() == ["kept"]


def test_database_errors_come_out_as_storage_error(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    with db.session_scope(engine) as session:
        session.add(ScanRow(id="dup", created_at=now))
    with pytest.raises(StorageError) as info, db.session_scope(engine) as session:
        session.add(ScanRow(id="dup", created_at=now))
    assert "IntegrityError" in str(info.value) or "UniqueViolation" in str(info.value)
    assert "\n" not in str(info.value)


def test_unreachable_server_error_is_readable_and_hides_the_password() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once
    engine = database.make_engine(
        DatabaseSettings(url="postgresql+psycopg://lewis:hunter2@127.0.0.1:1/lewis", pool_timeout=2)
    )
    try:
        with pytest.raises(StorageError) as info, db.session_scope(engine) as session:
            session.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    message = str(info.value)
    assert "hunter2" not in message
    assert "127.0.0.1:1" in message and "OperationalError" in message


def test_timestamps_are_utc_aware_and_naive_ones_are_refused(engine: Engine) -> None:
    eastern = dt.timezone(dt.timedelta(hours=-5))
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=eastern)
    with db.session_scope(engine) as session:
        session.add(ScanRow(id="tz", created_at=stamp))
    with db.session_scope(engine) as session:
        back = session.scalars(select(ScanRow.created_at)).one()
    assert back == stamp and back.tzinfo == dt.UTC and back.hour == 8
    with pytest.raises(StorageError, match="naive datetime"), db.session_scope(engine) as s:
        s.add(ScanRow(id="naive", created_at=dt.datetime(2026, 1, 1)))


def test_get_engine_is_one_per_url_per_process(tmp_path: Path) -> None:
    a = DatabaseSettings(url=f"sqlite:///{tmp_path / 'a.db'}")
    b = DatabaseSettings(url=f"sqlite:///{tmp_path / 'b.db'}")
    try:
        assert database.get_engine(a) is database.get_engine(a)
        assert database.get_engine(a) is not database.get_engine(b)
    finally:
        database.dispose_engines()


def _child_query(url: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        engine = database.get_engine(DatabaseSettings(url=url))
        with engine.connect() as conn:
            queue.put(conn.execute(text("SELECT pg_backend_pid()")).scalar())
    except Exception as exc:  # report, do not hang the parent
        queue.put(repr(exc))


def test_forked_child_gets_its_own_connections(pg_migrated_url: str) -> None:
    # Given a parent whose pool holds an open PostgreSQL connection
    settings = DatabaseSettings(url=pg_migrated_url, pool_size=2)
    parent = database.get_engine(settings)
    try:
        with parent.connect() as conn:
            parent_backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        # When a forked child uses "the same" engine
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_query, args=(pg_migrated_url, queue))
        child.start()
        answer = queue.get(timeout=30)
        child.join(30)
        # Then the child opened its own connection instead of reusing the parent's socket,
        # and the parent's pooled connection is still the same, working one
        assert isinstance(answer, int), answer
        assert answer != parent_backend
        assert database.get_engine(settings) is parent
        with parent.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == parent_backend
    finally:
        database.dispose_engines()
