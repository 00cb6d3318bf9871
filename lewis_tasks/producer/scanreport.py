"""A scan as the caller reads it back: live progress, and the report from the database.

:func:`read_progress` adds to the database counters (finished chunks) what running chunks
published in Redis (``infra.progress.SCAN_LIVE_KEY``), so a progress bar moves inside a long chunk; a
Redis hiccup only makes it coarser. :func:`load_scan_report` gives per host the open ports
with service/product/version and the findings ranked most severe first.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from ..domain.findings import level_rank
from ..errors import InvalidInput
from ..storage.scans import ScanProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostReport:
    """One scanned host: its open ports (with services), and how many were filtered/closed."""

    address: str
    hostname: str | None
    open_ports: tuple[dict[str, Any], ...]
    filtered: int = 0
    closed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "hostname": self.hostname,
                "open_ports": [dict(p) for p in self.open_ports], "filtered": self.filtered,
                "closed": self.closed}


@dataclass(frozen=True)
class ScanReport:
    """Everything a finished (or running) scan has recorded."""

    scan_id: str
    status: str
    request: dict[str, Any]
    created_at: str | None
    finished_at: str | None
    progress: ScanProgress
    hosts: tuple[HostReport, ...] = ()
    findings: tuple[dict[str, Any], ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def open_ports(self) -> dict[str, list[int]]:
        """Address → sorted open ports."""
        return {h.address: [int(p["port"]) for p in h.open_ports] for h in self.hosts}

    def to_dict(self) -> dict[str, Any]:
        request = {k: v for k, v in self.request.items() if k != "target_rows"}
        return {"scan_id": self.scan_id, "status": self.status, "request": request,
                "created_at": self.created_at, "finished_at": self.finished_at,
                "progress": self.progress.to_dict(), "summary": dict(self.summary),
                "error": self.error, "hosts": [h.to_dict() for h in self.hosts],
                "findings": [dict(f) for f in self.findings]}


def read_progress(scan_id: str) -> ScanProgress:
    """The scan's progress: database counters plus the live counters of unfinished chunks."""
    from ..storage import scans
    from ..storage.db import get_engine, session_scope

    # Live counters first: a chunk deletes its own after recording itself, so read in this
    # order a finished chunk is counted from the database, never dropped between the two reads.
    live = _live(scan_id)
    with session_scope(get_engine()) as session:
        progress = scans.scan_progress(session, scan_id)
        pending = set(scans.pending_chunks(session, scan_id)) if progress else set()
    if progress is None:
        raise InvalidInput(f"scan {scan_id!r}: no such scan")
    if not pending or progress.status != "running":
        return progress
    done = opened = 0
    for index, value in live.items():
        if index in pending:
            d, _, o = value.partition(",")
            done, opened = done + int(d or 0), opened + int(o or 0)
    return dataclasses.replace(progress,
                               ports_done=min(progress.ports_total, progress.ports_done + done),
                               open_count=progress.open_count + opened)


def _live(scan_id: str) -> dict[int, str]:
    from ..infra.progress import SCAN_LIVE_KEY
    from ..infra.redis_client import get_redis

    try:
        raw = get_redis().hgetall(SCAN_LIVE_KEY.format(scan_id=scan_id))
    except (redis.RedisError, OSError) as exc:
        log.debug("live progress of scan %s unavailable: %s", scan_id, exc)
        return {}
    out: dict[int, str] = {}
    for key, value in raw.items():
        try:
            out[int(key)] = value.decode() if isinstance(value, bytes) else str(value)
        except ValueError:
            continue
    return out


def resolve_scan_id(text: str) -> str:
    """The scan id ``text`` names: the id itself, or a unique prefix of one (as git takes a
    commit's); InvalidInput if none or several match."""
    from ..storage import scans
    from ..storage.db import get_engine, session_scope

    key = text.strip().lower()
    with session_scope(get_engine()) as session:
        if scans.get_scan(session, key) is not None:
            return key
        found = scans.scan_ids_starting(session, key)
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidInput(f"scan {text!r}: no such scan (`lewis scans list` shows them)")
    raise InvalidInput(f"scan {text!r}: the prefix is ambiguous, it starts "
                       f"{', '.join(found[:3])}{' …' if len(found) > 3 else ''}")


def load_scan_report(scan_id: str) -> ScanReport | None:
    """The stored report of scan ``scan_id``, or None if there is no such scan."""
    from ..storage import scans
    from ..storage.db import get_engine, session_scope

    with session_scope(get_engine()) as session:
        scan = scans.get_scan(session, scan_id)
        if scan is None:
            return None
        progress = scans.scan_progress(session, scan_id)
        ports = scans.list_scan_ports(session, scan_id)
        findings = scans.list_findings(session, scan_id=scan_id, limit=1_000_000)
        chunks = _chunk_results(session, scan_id)
    request = dict(scan.request or {})
    names = {h["address"]: h.get("hostname") for h in request.get("hosts") or ()}
    counts: dict[str, list[int]] = {}
    for c in chunks:
        tally = counts.setdefault(str(c.get("address")), [0, 0])
        tally[0] += int(c.get("filtered") or 0)
        tally[1] += int(c.get("closed") or 0)
    by_host: dict[str, list[dict[str, Any]]] = {a: [] for a in names}
    for row in ports:
        by_host.setdefault(row.host, []).append(
            {"port": row.port, "state": row.state, "service": row.service,
             "product": row.product, "version": row.version, "banner": row.banner})
    hosts = tuple(HostReport(address, names.get(address), tuple(open_ports),
                             *counts.get(address, [0, 0]))
                  for address, open_ports in by_host.items())
    ranked = sorted(findings, key=lambda f: (-level_rank(f.severity), -(f.score or 0.0),
                                             f.host, f.port))
    assert progress is not None
    return ScanReport(scan.id, scan.status, request, _iso(scan.created_at),
                      _iso(scan.finished_at), progress, hosts,
                      tuple(_finding(f) for f in ranked), dict(scan.summary or {}), scan.error)


def _finding(f: Any) -> dict[str, Any]:
    detail = f.detail or {}
    return {"severity": f.severity, "host": f.host, "port": f.port, "service": f.service,
            "product": detail.get("product"), "version": detail.get("version"),
            "score": f.score, "title": detail.get("title", f.title),
            "cve_ids": list(f.cve_ids or []), "reasons": list(detail.get("reasons") or []),
            "revision": detail.get("revision"),
            "conditional_cve_ids": list(detail.get("conditional_cve_ids") or [])}


def _chunk_results(session: Any, scan_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from ..storage.models import ScanChunkRow

    stmt = select(ScanChunkRow.result).where(ScanChunkRow.scan_id == scan_id)
    return [r for r in session.scalars(stmt) if r]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


__all__ = ["HostReport", "ScanReport", "read_progress", "load_scan_report", "resolve_scan_id"]
