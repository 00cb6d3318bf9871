"""This process's database engines: built here from the settings, handed to storage.

Storage (:mod:`lewis_tasks.storage`) never reads a setting: its functions take a Session, and
``session_scope``/``migrate`` take an engine. This module reads the settings, sizes the pool for
the process's role and keeps one engine per database URL in the process's runtime
(:mod:`lewis_tasks.infra.runtime`), which a forked child drops without touching its parent's
sockets.

Server databases get the guide's pool (size, overflow, timeout, recycle) with a ping before
each checkout, so a database restart costs one reconnect, not a failed task. SQLite runs in WAL
mode with a busy timeout and foreign keys on, and every transaction takes the write lock up
front (``BEGIN IMMEDIATE``): two worker processes on one file then queue for the lock instead
of failing with "database is locked" halfway through (and two migrations run one after the
other). A block that only reads, on ``get_engine(read_only=True)``, takes a plain
``BEGIN`` instead: a WAL snapshot, no lock.

Connection budget (issue 21): a process keeps what its role needs (:data:`ROLE_POOLS`) —
``size`` connections stay open, ``overflow`` more are opened for a burst and closed as soon as
they are returned — instead of 20 + 30 per process, which exhausted PostgreSQL's 100 at two
processes. Each connection names its role and pid (``application_name``), so
``pg_stat_activity`` shows who holds what.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from ..errors import ConfigError
from .config import DatabaseSettings, get_settings, redact_url
from .runtime import runtime

READ_ONLY = "lewis_read_only"  # the execution option of get_engine(read_only=True)

# role: (connections kept open, more opened for a burst and closed when returned)
ROLE_POOLS: dict[str, tuple[int, int]] = {
    "io": (1, 3),  # many threads, each touching the database briefly at a chunk's start and end
    "cpu": (1, 1),  # per prefork child: one task at a time (a merge, a report)
    "control": (1, 1),  # beat jobs: a heartbeat, a prune
    "command": (1, 1),  # lewis CLI commands, producers, the monitor, the beat
}


def set_role(role: str) -> None:
    """Size this process's pools for ``role`` (a worker calls it at start, before any engine)."""
    runtime().role = check_role(role)


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLE_POOLS`, else ValueError."""
    if role not in ROLE_POOLS:
        raise ValueError(f"unknown process role {role!r} (roles: {', '.join(ROLE_POOLS)})")
    return role


def role_for_queues(queues: Iterable[str] | None) -> str:
    """The role of a worker consuming ``queues``: the biggest budget among them."""
    names = set(queues or ())
    return next((r for r in ("io", "cpu", "control") if r in names), "command")


def pool_for(database: DatabaseSettings, role: str | None = None) -> tuple[int, int]:
    """(pool size, max overflow): the settings' if ``database.pool_size`` is set, else the
    role's (:data:`ROLE_POOLS`; default: this process's role)."""
    if database.pool_size:
        return database.pool_size, database.max_overflow
    return ROLE_POOLS[role or runtime().role]


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


def make_engine(
    database: DatabaseSettings, *, pooled: bool = True, role: str | None = None
) -> Engine:
    """A new engine for ``database.url`` configured as the module docstring says, its pool
    sized for ``role`` (default: this process's).

    ``pooled=False`` opens a connection per use (one-shot commands such as migrations).
    """
    role = role or runtime().role
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
        # a read-only block takes a snapshot and no lock: scan chunks starting together each
        # check their scan first, and queued for the write lock they slept in SQLite's busy
        # handler before their first connect (BENCHMARKS.md, issue 18.4)
        read_only = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def one_shot_engine(database: DatabaseSettings | str) -> Iterator[Engine]:
    """An engine that opens a connection per use, disposed when the block ends (migrations,
    one-off commands); ``database`` may be a bare URL."""
    if isinstance(database, str):
        database = DatabaseSettings(url=database)
    engine = make_engine(database, pooled=False)
    try:
        yield engine
    finally:
        engine.dispose()


def get_engine(database: DatabaseSettings | None = None, *, read_only: bool = False) -> Engine:
    """This process's engine for ``database`` (default: the settings'), made on first use and
    kept in the process's runtime. ``read_only``: the same engine and pool for blocks that only
    read; on SQLite their transactions take no write lock (a plain ``BEGIN``: a WAL snapshot,
    which neither waits for a writer nor holds one up). A write through it may fail with
    "database is locked" at once instead of queueing for the lock."""
    engine = runtime().engine(database or get_settings().database, _pooled_engine)
    return engine.execution_options(**{READ_ONLY: True}) if read_only else engine


def _pooled_engine(database: DatabaseSettings, role: str) -> Engine:
    return make_engine(database, role=role)


def dispose_engines() -> None:
    """Close every engine of this process (tests, shutdown)."""
    runtime().dispose_engines()


__all__ = [
    "ROLE_POOLS",
    "set_role",
    "check_role",
    "role_for_queues",
    "pool_for",
    "parse_database_url",
    "make_engine",
    "one_shot_engine",
    "get_engine",
    "dispose_engines",
]
