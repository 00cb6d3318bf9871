"""Migrations: every table and index from `upgrade`, idempotent, and never drifting from the models."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import pytest
from setuptools import find_packages
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from lewis_tasks.errors import StorageError
from lewis_tasks.infra.database import one_shot_engine, parse_database_url
from lewis_tasks.storage import migrate
from lewis_tasks.storage.models import Base

GUIDE_INDEXES = {
    ("scans", "idx_scans_created_at"),
    ("findings", "idx_findings_severity"),
    ("targets", "idx_targets_status"),
}


@pytest.fixture
def empty_database(empty_database_url: str) -> Iterator[Engine]:
    """A one-shot engine on the empty database (what `lewis db upgrade` migrates with)."""
    with one_shot_engine(empty_database_url) as engine:
        yield engine


def _inspect(url: str) -> tuple[set[str], set[tuple[str, str]]]:
    engine = create_engine(parse_database_url(url), poolclass=NullPool)
    try:
        insp = inspect(engine)
        tables = set(insp.get_table_names())
        indexes = {(t, ix["name"]) for t in tables for ix in insp.get_indexes(t)}
        return tables, indexes
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_named_index(
    empty_database: Engine, empty_database_url: str
) -> None:
    assert migrate.upgrade(empty_database) == migrate.head_revision()
    tables, indexes = _inspect(empty_database_url)
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    wanted = {(t.name, ix.name) for t in Base.metadata.sorted_tables for ix in t.indexes}
    assert wanted >= GUIDE_INDEXES
    assert wanted <= indexes


def test_second_upgrade_is_a_no_op(
    empty_database: Engine, empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a migrated database holding a row
    caplog.set_level(logging.INFO, logger="alembic.runtime.migration")
    migrate.upgrade(empty_database)
    assert "Running upgrade  -> 0001" in caplog.text
    engine = create_engine(parse_database_url(empty_database_url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO scans (id, created_at, status, chunks_total, "
                    "chunks_done, ports_total, ports_done, open_count) VALUES "
                    "('s1', :t, 'done', 0, 0, 0, 0, 0)"
                ),
                {"t": dt.datetime(2026, 1, 1)},
            )
        # When upgrade runs again
        caplog.clear()
        assert migrate.upgrade(empty_database) == migrate.head_revision()
        # Then no migration step ran, and the data is untouched
        assert "Running upgrade" not in caplog.text
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM scans")).scalars().all() == ["s1"]
    finally:
        engine.dispose()


def test_migrations_and_models_do_not_drift(empty_database: Engine) -> None:
    # An empty database differs from the models (so the comparison can fail) ...
    assert migrate.schema_diff(empty_database) != []
    # ... and after the migrations it differs in nothing: no table, column, type, index,
    # unique constraint or foreign key exists in one and not the other.
    migrate.upgrade(empty_database)
    assert migrate.schema_diff(empty_database) == []


def test_current_revision_before_and_after(empty_database: Engine) -> None:
    assert migrate.current_revision(empty_database) is None
    migrate.upgrade(empty_database)
    assert migrate.current_revision(empty_database) == migrate.head_revision()


def test_unknown_revision_is_a_readable_storage_error(empty_database: Engine) -> None:
    with pytest.raises(StorageError, match="migration of .* failed"):
        migrate.upgrade(empty_database, revision="nonexistent")


def test_migration_scripts_ship_inside_the_package() -> None:
    # An installed wheel has no alembic.ini and no source tree: the scripts must be package
    # data that setuptools finds (the versions folder is a package for that reason).
    assert (migrate.MIGRATIONS / "env.py").is_file()
    assert (migrate.MIGRATIONS / "script.py.mako").is_file()
    assert list((migrate.MIGRATIONS / "versions").glob("0001_*.py"))
    packages = find_packages(str(migrate.MIGRATIONS.parents[2]), include=["lewis_tasks*"])
    assert "lewis_tasks.storage.migrations.versions" in packages
