"""Scaling decisions: one row per (slot, queue), with inputs, reason and actuator outcome.

Revision ID: 0002_scaling
Revises: 0001
Create Date: 2026-12-07

Self-contained, like 0001: the schema as it is at this revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_scaling"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def upgrade() -> None:
    op.create_table(
        "scaling_decisions",
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("current", sa.Integer(), nullable=True),
        sa.Column("desired", sa.Integer(), nullable=True),
        sa.Column("recommended", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("inputs", _json(), nullable=True),
        sa.Column("actuator", sa.String(length=32), nullable=False),
        sa.Column("outcome", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("slot", "queue", name="pk_scaling_decisions"),
    )
    op.create_index(
        "idx_scaling_decisions_queue_decided_at", "scaling_decisions", ["queue", "decided_at"]
    )


def downgrade() -> None:
    op.drop_index("idx_scaling_decisions_queue_decided_at", table_name="scaling_decisions")
    op.drop_table("scaling_decisions")
