"""Sessions on an engine handed in, and which database errors pass.

Storage never reads a setting: the process's engine is built from the settings by
:mod:`lewis_tasks.infra.database` (pool sized for the process's role, SQLite's WAL and write
lock) and handed to :func:`session_scope`.

A server that refuses a connection for now (too many clients, starting up) or a pool that stays
exhausted is :class:`DatabaseUnavailable`, a TransientError: the task retries with backoff
instead of failing the scan. So is a connection lost mid-transaction (SQLSTATE class 08, an
administrator's shutdown 57P01/57P02, or SQLAlchemy's ``connection_invalidated``). A
transaction that lost a race — serialization failure (40001), deadlock (40P01), lock not
available (55P03), SQLite busy or locked — is :class:`DatabaseConflict`, also a TransientError.
Anything else is a plain StorageError.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from ..domain.redact import redact_url
from ..errors import DatabaseConflict, DatabaseUnavailable, StorageError

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


def describe_error(exc: SQLAlchemyError, url: str | URL | None = None) -> str:
    """A one-line, password-free account of a database error, for a person."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    where = f" ({redact_url(str(url))})" if url is not None else ""
    return f"database error{where}: {type(orig or exc).__name__}: {detail}"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session on ``engine`` that commits when the block ends, rolls back on error.

    Database errors come out as :class:`StorageError`; objects stay readable after the block
    (no expiry on commit), so repository functions can return them.
    """
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
    "is_unavailable",
    "is_conflict",
    "error_kind",
    "session_scope",
    "describe_error",
]
