"""A database error that passes — a lost connection, a lock wait that timed out, a lost race —
is a TransientError (the task retries it); anything else stays a plain StorageError.

Real databases only: SQLite with its write lock held by another connection, PostgreSQL with a
row lock, a serialization failure and a terminated backend.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from lewis_tasks.cli.db import upgrade_database as upgrade
from lewis_tasks.errors import DatabaseConflict, DatabaseUnavailable, StorageError, TransientError
from lewis_tasks.infra.config import DatabaseSettings
from lewis_tasks.infra.database import make_engine
from lewis_tasks.storage import heartbeats
from lewis_tasks.storage.db import session_scope


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "lewis.db"
    upgrade(f"sqlite:///{path}")
    return path


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection holding SQLite's write lock (an open ``BEGIN IMMEDIATE``)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_locked_past_the_busy_timeout_is_transient(sqlite_path: Path) -> None:
    # Given a 1 s busy timeout and another connection holding the write lock
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{sqlite_path}", pool_timeout=1))
    holder = hold_write_lock(sqlite_path)
    try:
        # When a heartbeat is recorded (the call path of lewis.control.heartbeat)
        with pytest.raises(DatabaseConflict) as locked, session_scope(engine) as session:
            heartbeats.record_heartbeat(session, slot=1, worker="w@h", alive=True)
        # Then it is a TransientError, still a StorageError, and says why
        assert isinstance(locked.value, TransientError)
        assert isinstance(locked.value, StorageError)
        assert "database is locked" in str(locked.value)
        # and once the lock is released, the same call passes
        holder.rollback()
        with session_scope(engine) as session:
            assert heartbeats.record_heartbeat(session, slot=1, worker="w@h", alive=True)
    finally:
        holder.close()
        engine.dispose()


def test_a_read_only_block_reads_while_another_connection_holds_the_write_lock(
    sqlite_path: Path,
) -> None:
    # Given a 1 s busy timeout, a heartbeat on record, and another connection holding the
    # write lock (a scan chunk recording its ports, say)
    from lewis_tasks.infra.database import dispose_engines, get_engine

    database = DatabaseSettings(url=f"sqlite:///{sqlite_path}", pool_timeout=1)
    with session_scope(get_engine(database)) as session:
        assert heartbeats.record_heartbeat(session, slot=1, worker="w@h", alive=True)
    holder = hold_write_lock(sqlite_path)
    try:
        # When a block that only reads runs on the read-only engine
        with session_scope(get_engine(database, read_only=True)) as session:
            seen = heartbeats.latest_heartbeats(session)
        # Then it reads the committed state without waiting for the lock
        assert [h.worker for h in seen] == ["w@h"]
        # while the same read on the engine that writes queues for the lock and gives up
        with pytest.raises(DatabaseConflict), session_scope(get_engine(database)) as session:
            heartbeats.latest_heartbeats(session)
    finally:
        holder.close()
        dispose_engines()


@pytest.fixture
def sqlite_settings(sqlite_path: Path, lewis_settings: Any) -> Iterator[Any]:
    """The test settings (the app configured from them before any task is bound: binding
    freezes a task's time limits) on ``sqlite_path`` with a 1 s busy timeout."""
    from lewis_tasks.infra import config
    from lewis_tasks.infra.database import dispose_engines

    config.set_settings(
        config.replace_section(
            lewis_settings, "database", url=f"sqlite:///{sqlite_path}", pool_timeout=1
        )
    )
    try:
        yield config.get_settings()
    finally:
        dispose_engines()
        config.set_settings(lewis_settings)


def test_a_task_retries_on_a_locked_database_instead_of_failing(
    sqlite_path: Path, sqlite_settings: Any
) -> None:
    from celery.signals import task_retry

    from lewis_tasks.tasks.control import cleanup

    # Given the database's write lock held elsewhere, released when the task first retries
    holder = hold_write_lock(sqlite_path)
    retries: list[BaseException] = []

    def on_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
        retries.append(getattr(reason, "exc", reason))  # Celery's Retry carries the error
        holder.rollback()

    task_retry.connect(on_retry, weak=False)
    try:
        # When the cleanup job runs (eagerly: Celery's own retry path, no broker)
        result = cleanup.apply(kwargs={"slot": 7})
    finally:
        task_retry.disconnect(on_retry)
        holder.close()
    # Then the locked database was retried once, not a failure, and the retry succeeded
    assert [type(r) for r in retries] == [DatabaseConflict]
    assert result.state == "SUCCESS", result.result
    assert result.result["slot"] == 7


def test_the_row_writer_process_keeps_a_locked_database_transient(sqlite_path: Path) -> None:
    from lewis_tasks.domain.httpfetch import HttpOutcome
    from lewis_tasks.infra.rowwriter import RowWriter
    from lewis_tasks.tasks.http import ROW_WRITER_ROWS

    # Given the io process's row writer (a child process) and the write lock held elsewhere
    writer = RowWriter(
        DatabaseSettings(url=f"sqlite:///{sqlite_path}", pool_timeout=1), ROW_WRITER_ROWS
    )
    holder = hold_write_lock(sqlite_path)
    try:
        # When it stores a chunk's rows, then the error crosses the pipe still transient
        with pytest.raises(DatabaseConflict) as locked:
            writer.store("b-locked", 0, [HttpOutcome(0, "http://127.0.0.1/", "GET", status=200)])
        assert isinstance(locked.value, TransientError)
    finally:
        holder.close()
        writer.close()


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg_table(pg_migrated_url: str) -> Iterator[tuple[Engine, str]]:
    """(an admin engine, a scratch table with one row) in the shared test database."""
    admin = create_engine(pg_migrated_url, poolclass=NullPool)
    table = f"lewis_race_{secrets.token_hex(4)}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"))
        conn.execute(text(f"INSERT INTO {table} VALUES (1, 0)"))
    try:
        yield admin, table
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        admin.dispose()


@pytest.mark.postgres
def test_postgres_lock_timeout_is_transient(
    pg_migrated_url: str, pg_table: tuple[Engine, str]
) -> None:
    admin, table = pg_table
    engine = make_engine(DatabaseSettings(url=pg_migrated_url, pool_size=1, max_overflow=0))
    try:
        # Given another transaction holding the row
        with admin.connect() as holder:
            holder.execute(text(f"SELECT n FROM {table} WHERE id = 1 FOR UPDATE"))
            # When ours waits for it longer than its lock_timeout (SQLSTATE 55P03)
            with pytest.raises(DatabaseConflict) as waited, session_scope(engine) as session:
                session.execute(text("SET LOCAL lock_timeout = '200ms'"))
                session.execute(text(f"UPDATE {table} SET n = n + 1 WHERE id = 1"))
            holder.rollback()
        # Then it is a TransientError
        assert isinstance(waited.value, TransientError)
        assert "LockNotAvailable" in str(waited.value) or "lock timeout" in str(waited.value)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_serialization_failure_is_transient(
    pg_migrated_url: str, pg_table: tuple[Engine, str]
) -> None:
    admin, table = pg_table
    engine = make_engine(DatabaseSettings(url=pg_migrated_url, pool_size=1, max_overflow=0))
    try:
        with pytest.raises(DatabaseConflict) as lost, session_scope(engine) as session:
            # Given our repeatable-read snapshot of the row
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            session.execute(text(f"SELECT n FROM {table} WHERE id = 1"))
            # When another transaction changes it and commits
            with admin.begin() as other:
                other.execute(text(f"UPDATE {table} SET n = 5 WHERE id = 1"))
            # Then our update of it loses the race (SQLSTATE 40001)
            session.execute(text(f"UPDATE {table} SET n = n + 1 WHERE id = 1"))
        assert isinstance(lost.value, TransientError)
        assert "SerializationFailure" in str(lost.value) or "serialize" in str(lost.value)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_connection_lost_mid_transaction_is_transient(
    pg_migrated_url: str, pg_table: tuple[Engine, str]
) -> None:
    admin, table = pg_table
    engine = make_engine(DatabaseSettings(url=pg_migrated_url, pool_size=1, max_overflow=0))
    try:
        with pytest.raises(DatabaseUnavailable) as lost, session_scope(engine) as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            # When an administrator (or a failover) terminates our backend mid-transaction
            with admin.begin() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            session.execute(text(f"UPDATE {table} SET n = n + 1 WHERE id = 1"))
        # Then it is a TransientError: the retry gets a fresh connection
        assert isinstance(lost.value, TransientError)
        with session_scope(engine) as session:
            assert session.execute(text(f"SELECT n FROM {table}")).scalar_one() == 0
    finally:
        engine.dispose()


class _ServerError(Exception):
    """What psycopg raises, as far as the classification reads it: the SQLSTATE."""

    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "sqlstate, kind",
    [
        ("08006", DatabaseUnavailable),  # connection failure (class 08)
        ("08003", DatabaseUnavailable),  # connection does not exist
        ("57P01", DatabaseUnavailable),  # admin shutdown
        ("57P02", DatabaseUnavailable),  # crash shutdown
        ("57P03", DatabaseUnavailable),  # cannot connect now
        ("53300", DatabaseUnavailable),  # too many connections
        ("40001", DatabaseConflict),  # serialization failure
        ("40P01", DatabaseConflict),  # deadlock detected
        ("55P03", DatabaseConflict),  # lock not available
        ("23505", StorageError),  # unique violation: the write is wrong, retrying will not help
        ("42P01", StorageError),  # undefined table
    ],
)
def test_sqlstates_the_live_tests_cannot_provoke_are_classified(
    sqlstate: str, kind: type[StorageError]
) -> None:
    from sqlalchemy.exc import DBAPIError

    from lewis_tasks.storage.db import error_kind

    exc = DBAPIError("UPDATE t SET n = 1", {}, _ServerError(sqlstate, "server said no"))
    assert error_kind(exc) is kind


def test_a_plain_bad_statement_is_not_transient(sqlite_path: Path) -> None:
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{sqlite_path}", pool_timeout=1))
    try:
        with pytest.raises(StorageError) as bad, session_scope(engine) as session:
            session.execute(text("SELECT * FROM no_such_table"))
        assert not isinstance(bad.value, TransientError)
    finally:
        engine.dispose()
