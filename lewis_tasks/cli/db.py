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
    from ..storage.migrate import upgrade as run_upgrade

    url = get_settings().database.url
    run_upgrade(url)
    click.echo(f"database {redact_url(url)} is at the newest revision")
