"""Engines and sessions: one engine per database URL per process, built from the settings.

Server databases get the guide's pool (size, overflow, timeout, recycle) with a ping before
each checkout, so a database restart costs one reconnect, not a failed task. SQLite runs in WAL
mode with a busy timeout and foreign keys on, and every transaction takes the write lock up
front (``BEGIN IMMEDIATE``): two worker processes on one file then queue for the lock instead
of failing with "database is locked" halfway through.

After a fork a child must not touch its parent's pooled sockets: :func:`dispose_after_fork`
(registered with ``os.register_at_fork`` and callable from a worker's init) drops them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ..errors import ConfigError, StorageError
from ..infra.config import DatabaseSettings, get_settings, redact_url

_engines: dict[str, Engine] = {}
_engines_pid = os.getpid()
_lock = threading.Lock()


def parse_database_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it; a bare ``postgresql://`` means psycopg 3 (the one we ship)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"setting database.url: not a database URL: {redact_url(url)!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(database: DatabaseSettings, *, pooled: bool = True) -> Engine:
    """A new engine for ``database.url`` configured as the module docstring says.

    ``pooled=False`` opens a connection per use (one-shot commands such as migrations).
    """
    url = parse_database_url(database.url)
    kwargs: dict[str, Any] = {"echo": database.echo_sql}
    if url.get_backend_name() == "sqlite":
        # no pre-ping: a file has no server to drop the connection (a ping per checkout was
        # ~10 % of a batch chunk's database time)
        return _sqlite_engine(url, database, pooled, kwargs)
    kwargs["pool_pre_ping"] = True  # a server restarted since the last use: reconnect once
    if pooled:
        kwargs.update(pool_size=database.pool_size, max_overflow=database.max_overflow,
                      pool_timeout=database.pool_timeout, pool_recycle=database.pool_recycle)
    else:
        kwargs["poolclass"] = NullPool
    if url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": min(database.pool_timeout, 10)}
    try:
        return create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"setting database.url {redact_url(database.url)!r}: {exc}") from None


def _sqlite_engine(url: URL, database: DatabaseSettings, pooled: bool,
                   kwargs: dict[str, Any]) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # pool_timeout doubles as the busy timeout: both say how long to wait for the database.
    kwargs["connect_args"] = {"timeout": float(database.pool_timeout)}
    if not pooled:
        kwargs["poolclass"] = NullPool
    engine = create_engine(url, **kwargs)
    busy_ms = int(database.pool_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below open transactions
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoints
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def get_engine(database: DatabaseSettings | None = None) -> Engine:
    """This process's engine for ``database`` (default: the settings'), created on first use."""
    database = database or get_settings().database
    with _lock:
        if os.getpid() != _engines_pid:
            _forget_engines()
        engine = _engines.get(database.url)
        if engine is None:
            engine = _engines[database.url] = make_engine(database)
        return engine


def _forget_engines() -> None:
    global _engines_pid
    for engine in _engines.values():
        # close=False: the parent still owns those sockets; just stop this process using them.
        engine.dispose(close=False)
    _engines.clear()
    _engines_pid = os.getpid()


def dispose_after_fork() -> None:
    """Drop the pooled connections inherited from a parent process (call in a forked child)."""
    _forget_engines()


def dispose_engines() -> None:
    """Close every engine of this process (tests, shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


os.register_at_fork(after_in_child=dispose_after_fork)


def describe_error(exc: SQLAlchemyError, url: str | URL | None = None) -> str:
    """A one-line, password-free account of a database error, for a person."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    where = f" ({redact_url(str(url))})" if url is not None else ""
    return f"database error{where}: {type(orig or exc).__name__}: {detail}"


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits when the block ends, rolls back on error.

    Database errors come out as :class:`StorageError`; objects stay readable after the block
    (no expiry on commit), so repository functions can return them.
    """
    engine = engine or get_engine()
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        url = engine.url.render_as_string(hide_password=True)
        raise StorageError(describe_error(exc, url)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = ["make_engine", "get_engine", "session_scope", "dispose_after_fork",
           "dispose_engines", "parse_database_url", "describe_error"]
