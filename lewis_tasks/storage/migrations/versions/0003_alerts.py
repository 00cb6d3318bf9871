"""Alert history: one row per transition of an alert (issue 15).

Revision ID: 0003_alerts
Revises: 0002_scaling
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_alerts"
down_revision: str | None = "0002_scaling"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def upgrade() -> None:
    op.create_table(
        "alert_history",
        sa.Column("fingerprint", sa.String(512), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("labels", _json(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", "at", "to_state", name="pk_alert_history"),
    )
    op.create_index("idx_alert_history_at", "alert_history", ["at"])


def downgrade() -> None:
    op.drop_index("idx_alert_history_at", table_name="alert_history")
    op.drop_table("alert_history")
