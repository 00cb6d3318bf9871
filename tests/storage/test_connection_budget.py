"""The database connection budget: pools per process role, connections named by role, and
"too many connections" as a passing failure (retried), not a failed write."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from lewis_tasks.errors import DatabaseUnavailable, StorageError, TransientError
from lewis_tasks.infra import database as db
from lewis_tasks.infra.config import DatabaseSettings
from lewis_tasks.infra.database import ROLE_POOLS, make_engine, pool_for, role_for_queues
from lewis_tasks.storage.db import session_scope


@pytest.fixture
def role() -> Iterator[None]:
    yield
    db.set_role("command")


def test_pools_follow_the_process_role_unless_a_size_is_set(role: None) -> None:
    auto = DatabaseSettings(url="postgresql://x@127.0.0.1/x")
    assert pool_for(auto, "io") == (1, 3) and pool_for(auto, "cpu") == (1, 1)
    db.set_role("io")
    assert pool_for(auto) == ROLE_POOLS["io"]
    fixed = DatabaseSettings(url="postgresql://x@127.0.0.1/x", pool_size=6, max_overflow=2)
    assert pool_for(fixed, "io") == (6, 2)
    assert role_for_queues({"cpu", "io"}) == "io" and role_for_queues(["control"]) == "control"
    assert role_for_queues([]) == "command"
    with pytest.raises(ValueError):
        db.set_role("gpu")


@pytest.mark.postgres
def test_too_many_connections_is_transient_and_connections_name_their_role(
    pg_server_url: str, pg_migrated_url: str, role: None
) -> None:
    admin = create_engine(pg_server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    user = f"lewis_limited_{secrets.token_hex(4)}"
    database = make_url(pg_migrated_url).database
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{user}" LOGIN CONNECTION LIMIT 1'))
        conn.execute(text(f'GRANT ALL ON DATABASE "{database}" TO "{user}"'))
    url = make_url(pg_migrated_url).set(username=user, password=None)
    db.set_role("io")
    engine = make_engine(
        DatabaseSettings(url=url.render_as_string(hide_password=False), pool_timeout=2)
    )
    other = make_engine(
        DatabaseSettings(url=url.render_as_string(hide_password=False), pool_timeout=2)
    )
    try:
        with session_scope(engine) as session:
            session.execute(text("SELECT 1"))
            with admin.connect() as conn:  # the connection names its role and process
                names = (
                    conn.execute(
                        text("SELECT application_name FROM pg_stat_activity WHERE usename = :u"),
                        {"u": user},
                    )
                    .scalars()
                    .all()
                )
            assert len(names) == 1 and names[0].startswith("lewis-io-")
            # Given the role's one connection in use, a second one is refused by the server
            with pytest.raises(DatabaseUnavailable) as refused, session_scope(other) as second:
                second.execute(text("SELECT 1"))
        # Then the refusal is a TransientError (tasks retry it) and still a StorageError
        assert isinstance(refused.value, TransientError)
        assert isinstance(refused.value, StorageError)
        assert "too many connections" in str(refused.value)
        # and a plain bad statement is not
        with pytest.raises(StorageError) as bad, session_scope(engine) as session:
            session.execute(text("SELECT * FROM no_such_table"))
        assert not isinstance(bad.value, TransientError)
    finally:
        engine.dispose()
        other.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'REVOKE ALL ON DATABASE "{database}" FROM "{user}"'))
            conn.execute(text(f'DROP ROLE "{user}"'))
        admin.dispose()
