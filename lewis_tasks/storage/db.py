"""Engines and sessions: one engine per database URL per process, built from the settings.

Server databases get the guide's pool (size, overflow, timeout, recycle) with a ping before
each checkout, so a database restart costs one reconnect, not a failed task. SQLite runs in WAL
mode with a busy timeout and foreign keys on, and every transaction takes the write lock up
front (``BEGIN IMMEDIATE``): two worker processes on one file then queue for the lock instead
of failing with "database is locked" halfway through.

The engines live in the process's worker runtime (:mod:`lewis_tasks.infra.runtime`), which
also says the process's role; after a fork the child's runtime drops the inherited pools
without touching the parent's sockets.

Connection budget (issue 21): a process keeps what its role needs (:data:`ROLE_POOLS`) —
``size`` connections stay open, ``overflow`` more are opened for a burst and closed as soon as
they are returned — instead of 20 + 30 per process, which exhausted PostgreSQL's 100 at two
processes. Each connection names its role and pid (``application_name``), so
``pg_stat_activity`` shows who holds what. A server that refuses a connection for now (too
many clients, starting up) or a pool that stays exhausted is :class:`DatabaseUnavailable`, a
TransientError: the task retries with backoff instead of failing the scan. So is a connection
lost mid-transaction (SQLSTATE class 08, an administrator's shutdown 57P01/57P02, or
SQLAlchemy's ``connection_invalidated``). A transaction that lost a race — serialization
failure (40001), deadlock (40P01), lock not available (55P03), SQLite busy or locked — is
:class:`DatabaseConflict`, also a TransientError. Anything else is a plain StorageError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ..errors import ConfigError, DatabaseConflict, DatabaseUnavailable, StorageError
from ..infra.config import DatabaseSettings, get_settings, redact_url

# role: (connections kept open, more opened for a burst and closed when returned)
ROLE_POOLS: dict[str, tuple[int, int]] = {
    "io": (1, 3),  # many threads, each touching the database briefly at a chunk's start and end
    "cpu": (1, 1),  # per prefork child: one task at a time (a merge, a report)
    "control": (1, 1),  # beat jobs: a heartbeat, a prune
    "command": (1, 1),  # lewis CLI commands, producers, the monitor, the beat
}
# SQLSTATEs of a server that refuses new connections for now: too many connections (53300),
# configuration limit exceeded (53400), cannot connect now (57P03: starting or shutting down);
# or that dropped ours: admin shutdown (57P01), crash shutdown (57P02). Class 08 (connection
# exception: 08000, 08003, 08006…) is matched by its prefix.
UNAVAILABLE_STATES = frozenset({"53300", "53400", "57P01", "57P02", "57P03"})
UNAVAILABLE_CLASSES = ("08",)
UNAVAILABLE_TEXT = (
    "too many clients",
    "too many connections",
    "remaining connection slots",
    "the database system is starting up",
    "the database system is shutting down",
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
)
# A lost race: serialization failure (40001), deadlock (40P01), lock not available (55P03:
# lock_timeout, NOWAIT); SQLite's busy and locked (result codes 5 and 6, extended codes keep
# them in their low byte) once its busy timeout has run out.
CONFLICT_STATES = frozenset({"40001", "40P01", "55P03"})
SQLITE_BUSY_CODES = frozenset({5, 6})
CONFLICT_TEXT = ("database is locked", "database is busy", "database table is locked")


def _runtime() -> Any:
    from ..infra.runtime import runtime

    return runtime()


def parse_database_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it; a bare ``postgresql://`` means psycopg 3 (the one we ship)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"setting database.url: not a database URL: {redact_url(url)!r}"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def set_role(role: str) -> None:
    """Size this process's pools for ``role`` (a worker calls it at start, before any engine)."""
    check_role(role)
    _runtime().role = role


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLE_POOLS`, else ValueError."""
    if role not in ROLE_POOLS:
        raise ValueError(f"unknown process role {role!r} (roles: {', '.join(ROLE_POOLS)})")
    return role


def role_for_queues(queues: Any) -> str:
    """The role of a worker consuming ``queues``: the biggest budget among them."""
    names = set(queues or ())
    return next((r for r in ("io", "cpu", "control") if r in names), "command")


def pool_for(database: DatabaseSettings, role: str | None = None) -> tuple[int, int]:
    """(pool size, max overflow): the settings' if ``database.pool_size`` is set, else the
    role's (:data:`ROLE_POOLS`)."""
    if database.pool_size:
        return database.pool_size, database.max_overflow
    return ROLE_POOLS[role or _runtime().role]


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).lower()


def is_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` says "no connection for now" (refused, lost, the pool exhausted)
    rather than "this write is wrong"."""
    if isinstance(exc, PoolTimeout) or getattr(exc, "connection_invalidated", False):
        return True
    state = _sqlstate(exc)
    if state in UNAVAILABLE_STATES or state.startswith(UNAVAILABLE_CLASSES):
        return True
    return any(marker in _text(exc) for marker in UNAVAILABLE_TEXT)


def is_conflict(exc: BaseException) -> bool:
    """True if ``exc`` says the transaction lost a race (serialization, deadlock, a lock it
    waited for too long): the same work run again will likely pass."""
    if _sqlstate(exc) in CONFLICT_STATES:
        return True
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in SQLITE_BUSY_CODES:
        return True
    return any(marker in _text(exc) for marker in CONFLICT_TEXT)


def error_kind(exc: BaseException) -> type[StorageError]:
    """The StorageError ``exc`` comes out as: a TransientError (retried) when it passes."""
    if is_unavailable(exc):
        return DatabaseUnavailable
    if is_conflict(exc):
        return DatabaseConflict
    return StorageError


def make_engine(
    database: DatabaseSettings, *, pooled: bool = True, role: str | None = None
) -> Engine:
    """A new engine for ``database.url`` configured as the module docstring says, its pool
    sized for ``role`` (default: this process's).

    ``pooled=False`` opens a connection per use (one-shot commands such as migrations).
    """
    role = role or _runtime().role
    url = parse_database_url(database.url)
    kwargs: dict[str, Any] = {"echo": database.echo_sql}
    if url.get_backend_name() == "sqlite":
        # no pre-ping: a file has no server to drop the connection (a ping per checkout was
        # ~10 % of a batch chunk's database time)
        return _sqlite_engine(url, database, pooled, kwargs)
    kwargs["pool_pre_ping"] = True  # a server restarted since the last use: reconnect once
    if pooled:
        size, overflow = pool_for(database, role)
        kwargs.update(
            pool_size=size,
            max_overflow=overflow,
            pool_timeout=database.pool_timeout,
            pool_recycle=database.pool_recycle,
        )
    else:
        kwargs["poolclass"] = NullPool
    if url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {
            "connect_timeout": min(database.pool_timeout, 10),
            "application_name": f"lewis-{role}-{os.getpid()}",
        }
    try:
        return create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"setting database.url {redact_url(database.url)!r}: {exc}") from None


def _sqlite_engine(
    url: URL, database: DatabaseSettings, pooled: bool, kwargs: dict[str, Any]
) -> Engine:
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
    """This process's engine for ``database`` (default: the settings'), created on first use
    and kept in the process's runtime."""
    database = database or get_settings().database
    return _runtime().engine(database, _pooled_engine)


def _pooled_engine(database: DatabaseSettings, role: str) -> Engine:
    return make_engine(database, role=role)


def dispose_after_fork() -> None:
    """Drop the pooled connections inherited from a parent process (call in a forked child);
    the parent still owns those sockets, so none is closed."""
    _runtime().dispose_engines(close=False)


def dispose_engines() -> None:
    """Close every engine of this process (tests, shutdown)."""
    _runtime().dispose_engines()


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
        raise error_kind(exc)(describe_error(exc, url)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = [
    "ROLE_POOLS",
    "set_role",
    "check_role",
    "role_for_queues",
    "pool_for",
    "is_unavailable",
    "is_conflict",
    "error_kind",
    "make_engine",
    "get_engine",
    "session_scope",
    "dispose_after_fork",
    "dispose_engines",
    "parse_database_url",
    "describe_error",
]
