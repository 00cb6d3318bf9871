"""``lewis db``: the database schema."""

from __future__ import annotations

import click

from . import cli


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command()
def upgrade() -> None:
    """Create or migrate every table and index to the newest revision (a no-op when current)."""
    from ..infra.config import get_settings, redact_url

    url = get_settings().database.url
    upgrade_database(url)
    click.echo(f"database {redact_url(url)} is at the newest revision")


def upgrade_database(url: str, revision: str = "head") -> str | None:
    """Migrate the database at ``url`` to ``revision`` on a one-shot engine (a no-op when it is
    there already); returns the revision it is at."""
    from ..infra.database import one_shot_engine
    from ..storage.migrate import upgrade as run_upgrade

    with one_shot_engine(url) as engine:
        return run_upgrade(engine, revision)
