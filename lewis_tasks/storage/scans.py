"""Scans, their chunks, the ports they found and the findings ranked from them.

Every write is keyed by the scan id (and chunk index, host, port, title), so a chunk task or a
merge callback that runs twice changes nothing: :func:`record_chunk` bumps the scan's progress
counters only when it is the first to record that chunk, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..domain.findings import Finding
from ..domain.scanjob import OpenPort
from ..domain.scanreport import (
    TERMINAL,
    ChunkResult,
    ScanProgress,
    ScanReport,
    build_report,
    finding_entry,
)
from ..domain.services import ServiceInfo
from .models import FindingRow, ScanChunkRow, ScanPortRow, ScanRow, utcnow
from .rows import fetch, increment, upsert

_PORT_FIELDS = ("state", "service", "product", "version", "banner", "detail")
_FINDING_FIELDS = ("severity", "score", "service", "cve_ids", "detail")


def upsert_scan(
    session: Session,
    scan_id: str,
    *,
    request: Mapping[str, Any] | None = None,
    chunks_total: int = 0,
    ports_total: int = 0,
    status: str = "running",
    chunks: Iterable[Mapping[str, Any]] = (),
    created_at: datetime | None = None,
) -> bool:
    """Create the scan (and its planned chunks: ``chunk_index``, ``host``, ``ports``) once;
    ``created_at`` defaults to now (a scan recorded by its task: when it was submitted).

    A second call with the same id changes nothing and returns False: the first plan wins
    (it was written with the scan's row, in the same transaction, so it is not written again).
    """
    row = {
        "id": scan_id,
        "created_at": created_at or utcnow(),
        "status": status,
        "request": dict(request) if request is not None else None,
        "chunks_total": chunks_total,
        "ports_total": ports_total,
    }
    created = bool(upsert(session, ScanRow, [row]))
    if not created:
        return False
    plan = [
        {
            "scan_id": scan_id,
            "chunk_index": c["chunk_index"],
            "host": c.get("host"),
            "ports": c.get("ports"),
            "status": "pending",
        }
        for c in chunks
    ]
    upsert(session, ScanChunkRow, plan)
    return True


def record_chunk(
    session: Session,
    scan_id: str,
    chunk_index: int,
    result: Mapping[str, Any],
    *,
    ports_scanned: int,
    open_ports: Sequence[Mapping[str, Any]] = (),
    task_id: str | None = None,
    host: str | None = None,
) -> bool:
    """Store a finished chunk and its open ports, and advance the scan's counters.

    Returns False, and changes nothing, when that chunk was already recorded (a redelivered
    or duplicated task). The scan row must exist (:func:`upsert_scan` first).
    """
    row = {
        "scan_id": scan_id,
        "chunk_index": chunk_index,
        "status": "done",
        "result": dict(result),
        "task_id": task_id,
        "finished_at": utcnow(),
    }
    if host is not None:
        row["host"] = host
    done_cols = [k for k in row if k not in ("scan_id", "chunk_index")]
    first = upsert(
        session, ScanChunkRow, [row], update_cols=done_cols, where=ScanChunkRow.status != "done"
    )
    if not first:
        return False
    inserted = {
        (host, port)
        for _, host, port in upsert(session, ScanPortRow, _port_rows(scan_id, open_ports))
    }
    opened = sum(
        1
        for p in open_ports
        if p.get("state", "open") == "open" and (p["host"], int(p["port"])) in inserted
    )
    increment(
        session,
        ScanRow,
        {"id": scan_id},
        chunks_done=1,
        ports_done=ports_scanned,
        open_count=opened,
    )
    return True


def upsert_ports(session: Session, scan_id: str, ports: Iterable[Mapping[str, Any]]) -> int:
    """Add or refresh ports of a scan (e.g. after service identification); rows changed."""
    return len(
        upsert(
            session,
            ScanPortRow,
            _port_rows(scan_id, ports),
            update_cols=[f for f in _PORT_FIELDS],
            only_changed=True,
        )
    )


def upsert_findings(session: Session, scan_id: str, findings: Iterable[Mapping[str, Any]]) -> int:
    """Add or refresh findings keyed (scan, host, port, title); rows inserted or changed."""
    rows = [
        {
            "scan_id": scan_id,
            "host": f["host"],
            "port": f.get("port") or 0,
            "title": f["title"],
            "severity": f["severity"],
            "score": f.get("score"),
            "service": f.get("service"),
            "cve_ids": list(f.get("cve_ids") or []),
            "detail": f.get("detail"),
            "created_at": utcnow(),
        }
        for f in findings
    ]
    return len(
        upsert(
            session,
            FindingRow,
            rows,
            on=["scan_id", "host", "port", "title"],
            update_cols=list(_FINDING_FIELDS),
            only_changed=True,
        )
    )


def set_scan_status(
    session: Session,
    scan_id: str,
    status: str,
    *,
    summary: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Move a scan to ``status``; a terminal status stamps ``finished_at`` once. False: no scan."""
    values: dict[str, Any] = {"status": status}
    if summary is not None:
        values["summary"] = dict(summary)
    if error is not None:
        values["error"] = error
    stmt = update(ScanRow).where(ScanRow.id == scan_id).values(values)
    hit = bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
    if hit and status in TERMINAL:
        session.execute(
            update(ScanRow)
            .where(ScanRow.id == scan_id, ScanRow.finished_at.is_(None))
            .values(finished_at=utcnow())
        )
    return hit


def cancel_scan(session: Session, scan_id: str, reason: str = "cancelled on request") -> bool:
    """Move a scan that has not ended to ``cancelled``; False if it had (or does not exist)."""
    stmt = (
        update(ScanRow)
        .where(ScanRow.id == scan_id, ScanRow.status.not_in(TERMINAL))
        .values(status="cancelled", error=reason, finished_at=utcnow())
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def scan_progress(session: Session, scan_id: str) -> ScanProgress | None:
    """The scan's counters, or None if there is no such scan."""
    scan = fetch(session, ScanRow, scan_id)
    if scan is None:
        return None
    return ScanProgress(
        scan.id,
        scan.status,
        scan.chunks_total,
        scan.chunks_done,
        scan.ports_total,
        scan.ports_done,
        scan.open_count,
    )


def get_scan(session: Session, scan_id: str) -> ScanRow | None:
    """One scan row, or None."""
    return fetch(session, ScanRow, scan_id)


def scan_ids_starting(session: Session, prefix: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` scan ids that start with ``prefix`` (the primary key's index serves it:
    ``LIKE 'abc%'`` on a hex id, no wildcard characters to escape)."""
    if not prefix or not all(c in "0123456789abcdef" for c in prefix):
        return []
    stmt = select(ScanRow.id).where(ScanRow.id.like(f"{prefix}%")).order_by(ScanRow.id).limit(limit)
    return list(session.scalars(stmt))


def list_scans(session: Session, *, status: str | None = None, limit: int = 50) -> list[ScanRow]:
    """Scans, newest first (uses idx_scans_created_at)."""
    stmt = select(ScanRow)
    if status is not None:
        stmt = stmt.where(ScanRow.status == status)
    return list(session.scalars(stmt.order_by(ScanRow.created_at.desc(), ScanRow.id).limit(limit)))


def scan_exists(session: Session, scan_id: str) -> bool:
    """Whether the scan has a row (its id alone is read: no request, no JSON)."""
    return session.scalar(select(ScanRow.id).where(ScanRow.id == scan_id)) is not None


def chunk_pending(session: Session, scan_id: str, chunk_index: int) -> bool | None:
    """Whether the scan's chunk is planned and not recorded yet: True, False (recorded, or
    not in the plan), or None when the scan itself does not exist. One primary-key lookup in
    the common case, a chunk that is planned."""
    status = session.scalar(
        select(ScanChunkRow.status).where(
            ScanChunkRow.scan_id == scan_id, ScanChunkRow.chunk_index == chunk_index
        )
    )
    if status is not None:
        return bool(status != "done")
    return False if scan_exists(session, scan_id) else None


def pending_chunks(session: Session, scan_id: str) -> list[int]:
    """Indexes of the scan's planned chunks not recorded yet."""
    stmt = (
        select(ScanChunkRow.chunk_index)
        .where(ScanChunkRow.scan_id == scan_id, ScanChunkRow.status != "done")
        .order_by(ScanChunkRow.chunk_index)
    )
    return list(session.scalars(stmt))


def list_scan_ports(
    session: Session, scan_id: str, state: str | None = "open"
) -> list[ScanPortRow]:
    """A scan's ports (default: the open ones), by host then port."""
    stmt = select(ScanPortRow).where(ScanPortRow.scan_id == scan_id)
    if state is not None:
        stmt = stmt.where(ScanPortRow.state == state)
    return list(session.scalars(stmt.order_by(ScanPortRow.host, ScanPortRow.port)))


def list_findings(
    session: Session,
    *,
    scan_id: str | None = None,
    severities: Sequence[str] | None = None,
    limit: int = 1000,
) -> list[FindingRow]:
    """Findings, highest score first (uses idx_findings_severity when filtering by severity)."""
    stmt = select(FindingRow)
    if scan_id is not None:
        stmt = stmt.where(FindingRow.scan_id == scan_id)
    if severities:
        stmt = stmt.where(FindingRow.severity.in_(list(severities)))
    order = (
        FindingRow.score.desc().nulls_last(),
        FindingRow.host,
        FindingRow.port,
        FindingRow.title,
    )
    return list(session.scalars(stmt.order_by(*order).limit(limit)))


def chunk_results(session: Session, scan_id: str) -> list[ChunkResult]:
    """What the scan's recorded chunks counted (filtered, closed, unidentified), by chunk."""
    stmt = (
        select(ScanChunkRow.result)
        .where(ScanChunkRow.scan_id == scan_id)
        .order_by(ScanChunkRow.chunk_index)
    )
    return [ChunkResult.from_dict(r) for r in session.scalars(stmt) if r]


def port_row(port: OpenPort) -> dict[str, Any]:
    """The row of an open port and the service found on it (:func:`record_chunk`'s input)."""
    info = port.service
    return {
        "host": port.address,
        "port": info.port,
        "state": "open",
        "service": info.name,
        "product": info.product,
        "version": info.version,
        "banner": info.banner,
        "detail": {"probe": info.probe, "extra": dict(info.extra), "hostname": port.hostname},
    }


def open_ports(session: Session, scan_id: str) -> list[OpenPort]:
    """The scan's open ports, each with its service, as :func:`port_row` stored them."""
    return [_open_port(row) for row in list_scan_ports(session, scan_id)]


def finding_row(f: Finding) -> dict[str, Any]:
    """The row of a finding (:func:`upsert_findings`' input). Keyed by the first reason (the
    service's rule, or "Open port: …"), not the display title, which names the worst CVE:
    new vulnerability data then updates the same row."""
    return {
        "host": f.address,
        "port": f.port,
        "title": f.reasons[0][:255],
        "severity": f.severity,
        "score": f.score,
        "service": f.service,
        "cve_ids": f.cve_ids,
        "detail": f.to_dict(),
    }


def save_findings(session: Session, scan_id: str, findings: Iterable[Finding]) -> int:
    """Add or refresh the scan's findings; rows inserted or changed."""
    return upsert_findings(session, scan_id, [finding_row(f) for f in findings])


def scan_findings(session: Session, scan_id: str) -> list[Finding]:
    """Every finding of the scan, as :func:`finding_row` stored it (highest score first)."""
    return [_finding(row) for row in list_findings(session, scan_id=scan_id, limit=1_000_000)]


def read_report(session: Session, scan_id: str) -> ScanReport | None:
    """The stored report of scan ``scan_id`` (as far as it has come), or None if there is no
    such scan: the domain's :func:`~lewis_tasks.domain.scanreport.build_report` over its rows,
    the one the merge computes its summary with."""
    scan = get_scan(session, scan_id)
    progress = scan_progress(session, scan_id)
    if scan is None or progress is None:
        return None
    request = dict(scan.request or {})
    planned = [(h["address"], h.get("hostname")) for h in request.get("hosts") or ()]
    body = build_report(
        chunk_results(session, scan_id),
        open_ports(session, scan_id),
        scan_findings(session, scan_id),
        planned,
    )
    return ScanReport(
        scan.id,
        scan.status,
        request,
        _iso(scan.created_at),
        _iso(scan.finished_at),
        progress,
        body.hosts,
        tuple(finding_entry(f) for f in body.findings),
        dict(scan.summary or {}),
        scan.error,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _open_port(row: ScanPortRow) -> OpenPort:
    detail = row.detail or {}
    info = ServiceInfo(
        row.port,
        row.service or "unknown",
        row.product,
        row.version,
        row.banner or "",
        detail.get("probe", ""),
        dict(detail.get("extra") or {}),
    )
    return OpenPort(row.host, info, detail.get("hostname"))


def _finding(row: FindingRow) -> Finding:
    # the columns first: a row whose detail predates a field still reads back
    cves = [{"cve_id": c, "score": 0.0, "severity": "info"} for c in row.cve_ids or ()]
    return Finding.from_dict(
        {
            "address": row.host,
            "port": row.port,
            "service": row.service or "unknown",
            "severity": row.severity,
            "score": row.score,
            "title": row.title,
            "cves": cves,
            **(row.detail or {}),
        }
    )


def _port_rows(scan_id: str, ports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "scan_id": scan_id,
            "host": p["host"],
            "port": int(p["port"]),
            "state": p.get("state", "open"),
            **{f: p.get(f) for f in _PORT_FIELDS if f != "state"},
        }
        for p in ports
    ]


__all__ = [
    "ScanProgress",
    "scan_ids_starting",
    "upsert_scan",
    "record_chunk",
    "upsert_ports",
    "upsert_findings",
    "chunk_results",
    "port_row",
    "open_ports",
    "finding_row",
    "save_findings",
    "scan_findings",
    "set_scan_status",
    "cancel_scan",
    "scan_progress",
    "get_scan",
    "list_scans",
    "pending_chunks",
    "chunk_pending",
    "scan_exists",
    "list_scan_ports",
    "list_findings",
    "TERMINAL",
]
