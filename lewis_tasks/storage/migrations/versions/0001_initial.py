"""Initial schema: every table and index of LEWIS tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Self-contained on purpose (no import of the models): a migration records the schema as it was
at this revision, whatever the models become later. Timestamps are timezone-aware; JSON is
JSONB on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _pk(table: str, *cols: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*cols, name=f"pk_{table}")


def _fk(table: str, col: str, target: str, target_col: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [col], [f"{target}.{target_col}"], ondelete="CASCADE", name=f"fk_{table}_{col}_{target}"
    )


def _str(n: int) -> sa.String:
    return sa.String(length=n)


def upgrade() -> None:
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("value", _str(255), nullable=False),
        sa.Column("kind", _str(16), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("first_seen", _ts(), nullable=False),
        sa.Column("last_scanned", _ts(), nullable=True),
        _pk("targets", "id"),
        sa.UniqueConstraint("value", name="uq_targets_value"),
    )
    op.create_index("idx_targets_status", "targets", ["status"])

    op.create_table(
        "scans",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("request", _json(), nullable=True),
        sa.Column("chunks_total", sa.Integer(), nullable=False),
        sa.Column("chunks_done", sa.Integer(), nullable=False),
        sa.Column("ports_total", sa.Integer(), nullable=False),
        sa.Column("ports_done", sa.Integer(), nullable=False),
        sa.Column("open_count", sa.Integer(), nullable=False),
        sa.Column("summary", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _pk("scans", "id"),
    )
    op.create_index("idx_scans_created_at", "scans", ["created_at"])

    op.create_table(
        "scan_chunks",
        sa.Column("scan_id", _str(64), nullable=False),
        sa.Column("chunk_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("host", _str(255), nullable=True),
        sa.Column("ports", _json(), nullable=True),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("task_id", _str(64), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        _fk("scan_chunks", "scan_id", "scans", "id"),
        _pk("scan_chunks", "scan_id", "chunk_index"),
    )

    op.create_table(
        "scan_ports",
        sa.Column("scan_id", _str(64), nullable=False),
        sa.Column("host", _str(255), nullable=False),
        sa.Column("port", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", _str(16), nullable=False),
        sa.Column("service", _str(64), nullable=True),
        sa.Column("product", _str(128), nullable=True),
        sa.Column("version", _str(64), nullable=True),
        sa.Column("banner", sa.Text(), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        _fk("scan_ports", "scan_id", "scans", "id"),
        _pk("scan_ports", "scan_id", "host", "port"),
    )

    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scan_id", _str(64), nullable=False),
        sa.Column("host", _str(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("severity", _str(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("title", _str(255), nullable=False),
        sa.Column("service", _str(64), nullable=True),
        sa.Column("cve_ids", _json(), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        _fk("findings", "scan_id", "scans", "id"),
        _pk("findings", "id"),
        sa.UniqueConstraint(
            "scan_id", "host", "port", "title", name="uq_findings_scan_id_host_port_title"
        ),
    )
    op.create_index("idx_findings_severity", "findings", ["severity"])

    op.create_table(
        "vulnerabilities",
        sa.Column("cve_id", _str(32), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("cvss_version", _str(8), nullable=True),
        sa.Column("cvss_vector", _str(255), nullable=True),
        sa.Column("cvss_score", sa.Float(), nullable=True),
        sa.Column("severity", _str(16), nullable=True),
        sa.Column("published", _ts(), nullable=True),
        sa.Column("modified", _ts(), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        _pk("vulnerabilities", "cve_id"),
    )

    op.create_table(
        "vuln_matches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cve_id", _str(32), nullable=False),
        sa.Column("match_key", _str(64), nullable=False),
        sa.Column("vendor", _str(128), nullable=False),
        sa.Column("product", _str(128), nullable=False),
        sa.Column("version_exact", _str(64), nullable=True),
        sa.Column("version_start_including", _str(64), nullable=True),
        sa.Column("version_start_excluding", _str(64), nullable=True),
        sa.Column("version_end_including", _str(64), nullable=True),
        sa.Column("version_end_excluding", _str(64), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        _fk("vuln_matches", "cve_id", "vulnerabilities", "cve_id"),
        _pk("vuln_matches", "id"),
        sa.UniqueConstraint("match_key", name="uq_vuln_matches_match_key"),
    )
    op.create_index("idx_vuln_matches_vendor_product", "vuln_matches", ["vendor", "product"])

    op.create_table(
        "heartbeats",
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("worker", _str(255), nullable=False),
        sa.Column("alive", sa.Boolean(), nullable=False),
        sa.Column("rtt_ms", sa.Float(), nullable=True),
        sa.Column("queues", _json(), nullable=True),
        sa.Column("recorded_at", _ts(), nullable=False),
        _pk("heartbeats", "slot", "worker"),
    )
    op.create_index("idx_heartbeats_recorded_at", "heartbeats", ["recorded_at"])

    op.create_table(
        "http_batches",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("request", _json(), nullable=True),
        sa.Column("summary", _json(), nullable=True),
        _pk("http_batches", "id"),
    )
    op.create_index("idx_http_batches_created_at", "http_batches", ["created_at"])

    op.create_table(
        "http_results",
        sa.Column("batch_id", _str(64), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("final_url", sa.Text(), nullable=True),
        sa.Column("method", _str(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error_class", _str(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("bytes", sa.Integer(), nullable=True),
        sa.Column("sha256", _str(64), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("timings", _json(), nullable=True),
        sa.Column("redirects", _json(), nullable=True),
        sa.Column("headers", _json(), nullable=True),
        _fk("http_results", "batch_id", "http_batches", "id"),
        _pk("http_results", "batch_id", "idx"),
    )

    op.create_table(
        "loadtests",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("request", _json(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        _pk("loadtests", "id"),
    )
    op.create_index("idx_loadtests_created_at", "loadtests", ["created_at"])

    op.create_table(
        "profiles",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("task_name", _str(255), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("pstats_path", sa.Text(), nullable=True),
        _pk("profiles", "id"),
    )
    op.create_index("idx_profiles_created_at", "profiles", ["created_at"])

    op.create_table(
        "diagnoses",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("worker", _str(255), nullable=True),
        sa.Column("report", _json(), nullable=True),
        _pk("diagnoses", "id"),
    )
    op.create_index("idx_diagnoses_created_at", "diagnoses", ["created_at"])

    op.create_table(
        "benchmark_runs",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("suite", _str(64), nullable=False),
        sa.Column("name", _str(128), nullable=False),
        sa.Column("queue", _str(32), nullable=True),
        sa.Column("metrics", _json(), nullable=True),
        sa.Column("machine", _json(), nullable=True),
        sa.Column("versions", _json(), nullable=True),
        sa.Column("settings", _json(), nullable=True),
        _pk("benchmark_runs", "id"),
    )
    op.create_index(
        "idx_benchmark_runs_suite_created_at", "benchmark_runs", ["suite", "created_at"]
    )


def downgrade() -> None:
    # Children before parents, so foreign keys never point at a dropped table.
    for table in (
        "benchmark_runs",
        "diagnoses",
        "profiles",
        "loadtests",
        "http_results",
        "http_batches",
        "heartbeats",
        "vuln_matches",
        "vulnerabilities",
        "findings",
        "scan_ports",
        "scan_chunks",
        "scans",
        "targets",
    ):
        op.drop_table(table)
