"""The database tables, as SQLAlchemy 2 typed declarative models.

Every timestamp is UTC and timezone-aware (:class:`UtcDateTime`); flexible detail lives in JSON
columns (JSONB on PostgreSQL) so later features add keys, not migrations. Every constraint and
index has a fixed name (the naming convention below), so the Alembic migrations can name them
too and a test can prove the two never drift apart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

#: JSON everywhere, JSONB on PostgreSQL (comparable, indexable); None is SQL NULL, not 'null'.
Json = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def utcnow() -> dt.datetime:
    """Now, in UTC, timezone-aware: the only clock the tables use."""
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type: values are stored as naive UTC and given back as aware UTC.
    A naive datetime on the way in is refused, since its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give timestamps with a timezone (UTC)")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UtcDateTime(), dict[str, Any]: Json, list[Any]: Json}

    def to_dict(self) -> dict[str, Any]:
        """The row's columns as JSON-safe data (timestamps as ISO 8601 strings)."""
        out: dict[str, Any] = {}
        for column in self.__table__.columns:
            value = getattr(self, column.key)
            out[column.key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


def _fk(target: str) -> ForeignKey:
    # Children go with their parent: deleting a scan or batch leaves no orphans.
    return ForeignKey(target, ondelete="CASCADE")


class TargetRow(Base):
    __tablename__ = "targets"
    __table_args__ = (Index("idx_targets_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    value: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # ip, cidr, hostname
    status: Mapped[str] = mapped_column(String(16), default="active")
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_scanned: Mapped[dt.datetime | None]


class ScanRow(Base):
    __tablename__ = "scans"
    __table_args__ = (Index("idx_scans_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    request: Mapped[dict[str, Any] | None]
    chunks_total: Mapped[int] = mapped_column(default=0)
    chunks_done: Mapped[int] = mapped_column(default=0)
    ports_total: Mapped[int] = mapped_column(default=0)
    ports_done: Mapped[int] = mapped_column(default=0)
    open_count: Mapped[int] = mapped_column(default=0)
    summary: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)


class ScanChunkRow(Base):
    __tablename__ = "scan_chunks"

    scan_id: Mapped[str] = mapped_column(_fk("scans.id"), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    host: Mapped[str | None] = mapped_column(String(255))
    ports: Mapped[list[Any] | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result: Mapped[dict[str, Any] | None]
    task_id: Mapped[str | None] = mapped_column(String(64))
    finished_at: Mapped[dt.datetime | None]


class ScanPortRow(Base):
    __tablename__ = "scan_ports"  # keyed (scan_id, host, port): a port is recorded once per scan

    scan_id: Mapped[str] = mapped_column(_fk("scans.id"), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    port: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16))
    service: Mapped[str | None] = mapped_column(String(64))
    product: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(64))
    banner: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None]


class FindingRow(Base):
    __tablename__ = "findings"
    __table_args__ = (
        UniqueConstraint("scan_id", "host", "port", "title"),
        Index("idx_findings_severity", "severity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scan_id: Mapped[str] = mapped_column(_fk("scans.id"))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(default=0)  # 0: about the host (NULL would defeat the key)
    severity: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    title: Mapped[str] = mapped_column(String(255))
    service: Mapped[str | None] = mapped_column(String(64))
    cve_ids: Mapped[list[Any] | None]
    detail: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class VulnerabilityRow(Base):
    __tablename__ = "vulnerabilities"

    cve_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    cvss_version: Mapped[str | None] = mapped_column(String(8))
    cvss_vector: Mapped[str | None] = mapped_column(String(255))
    cvss_score: Mapped[float | None] = mapped_column(Float)
    severity: Mapped[str | None] = mapped_column(String(16))
    published: Mapped[dt.datetime | None]
    modified: Mapped[dt.datetime | None]
    detail: Mapped[dict[str, Any] | None]  # e.g. the full CVSS metric (the feed's own score)


class VulnMatchRow(Base):
    """One CPE range of a CVE. ``match_key`` (a digest of the row's values) makes re-import a no-op:
    NULL bounds defeat a plain unique constraint on the columns themselves."""

    __tablename__ = "vuln_matches"
    __table_args__ = (Index("idx_vuln_matches_vendor_product", "vendor", "product"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cve_id: Mapped[str] = mapped_column(_fk("vulnerabilities.cve_id"))
    match_key: Mapped[str] = mapped_column(String(64), unique=True)
    vendor: Mapped[str] = mapped_column(String(128))
    product: Mapped[str] = mapped_column(String(128))
    version_exact: Mapped[str | None] = mapped_column(String(64))
    version_start_including: Mapped[str | None] = mapped_column(String(64))
    version_start_excluding: Mapped[str | None] = mapped_column(String(64))
    version_end_including: Mapped[str | None] = mapped_column(String(64))
    version_end_excluding: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None]  # CPE version/update as written, vulnerable, platforms


class HeartbeatRow(Base):
    """One row per (interval slot, worker): two beats firing the same slot record it once."""

    __tablename__ = "heartbeats"
    __table_args__ = (Index("idx_heartbeats_recorded_at", "recorded_at"),)

    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    alive: Mapped[bool] = mapped_column(Boolean)
    rtt_ms: Mapped[float | None] = mapped_column(Float)
    queues: Mapped[list[Any] | None]
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class HttpBatchRow(Base):
    __tablename__ = "http_batches"
    __table_args__ = (Index("idx_http_batches_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    ok: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    request: Mapped[dict[str, Any] | None]
    summary: Mapped[dict[str, Any] | None]


class HttpResultRow(Base):
    __tablename__ = "http_results"

    batch_id: Mapped[str] = mapped_column(_fk("http_batches.id"), primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    url: Mapped[str] = mapped_column(Text)
    final_url: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(16), default="GET")
    status: Mapped[int | None]
    error_class: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None]
    sha256: Mapped[str | None] = mapped_column(String(64))
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    timings: Mapped[dict[str, Any] | None]
    redirects: Mapped[list[Any] | None]
    headers: Mapped[dict[str, Any] | None]


class LoadtestRow(Base):
    __tablename__ = "loadtests"
    __table_args__ = (Index("idx_loadtests_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    request: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]


class ProfileRunRow(Base):
    __tablename__ = "profiles"
    __table_args__ = (Index("idx_profiles_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result: Mapped[dict[str, Any] | None]
    pstats_path: Mapped[str | None] = mapped_column(Text)


class DiagnosisRow(Base):
    __tablename__ = "diagnoses"
    __table_args__ = (Index("idx_diagnoses_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    worker: Mapped[str | None] = mapped_column(String(255))
    report: Mapped[dict[str, Any] | None]


class BenchmarkRunRow(Base):
    __tablename__ = "benchmark_runs"
    __table_args__ = (Index("idx_benchmark_runs_suite_created_at", "suite", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    suite: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str | None] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any] | None]
    machine: Mapped[dict[str, Any] | None]
    versions: Mapped[dict[str, Any] | None]
    settings: Mapped[dict[str, Any] | None]


class ScalingDecisionRow(Base):
    """One scaling decision per (slot, queue): two beats deciding the same slot record it once,
    and only the one that inserted the row actuates (issue 16)."""

    __tablename__ = "scaling_decisions"
    __table_args__ = (Index("idx_scaling_decisions_queue_decided_at", "queue", "decided_at"),)

    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(16))  # up | down | none | hold
    current: Mapped[int | None] = mapped_column(Integer)
    desired: Mapped[int | None] = mapped_column(Integer)  # None: no action (stale metrics…)
    recommended: Mapped[int | None] = mapped_column(Integer)  # what the window remembers
    reason: Mapped[str] = mapped_column(Text)
    inputs: Mapped[dict[str, Any] | None]
    actuator: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[dict[str, Any] | None]  # what the actuator reported
    error: Mapped[str | None] = mapped_column(Text)  # an actuator failure; the next slot retries


class AlertHistoryRow(Base):
    """One row per alert transition (issue 15); keyed by alert, time and new state, so the
    outbox drained twice writes each transition once."""

    __tablename__ = "alert_history"
    __table_args__ = (Index("idx_alert_history_at", "at"),)

    fingerprint: Mapped[str] = mapped_column(String(512), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(primary_key=True)
    to_state: Mapped[str] = mapped_column(String(16), primary_key=True)
    from_state: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, Any] | None]
    value: Mapped[float | None] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text, default="")


__all__ = [
    "Base",
    "Json",
    "UtcDateTime",
    "utcnow",
    "TargetRow",
    "ScanRow",
    "ScanChunkRow",
    "ScanPortRow",
    "FindingRow",
    "VulnerabilityRow",
    "VulnMatchRow",
    "HeartbeatRow",
    "HttpBatchRow",
    "HttpResultRow",
    "LoadtestRow",
    "ProfileRunRow",
    "DiagnosisRow",
    "BenchmarkRunRow",
    "ScalingDecisionRow",
    "AlertHistoryRow",
]
