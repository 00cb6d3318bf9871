"""A scan's report, one model for the merge that writes it and the reader that shows it.

:func:`build_report` is pure: from the recorded chunks (:class:`ChunkResult`), the open ports
(:class:`~.scanjob.OpenPort`) and the findings (:class:`~.findings.Finding`) it gives the hosts
with their open ports, the findings ranked, and the summary counts. The merge task stores the
summary it computes; the reader (``producer.scanreport``) builds the same report from what was
stored, so both rank alike: most severe first, then by CVSS score, then by address (numerically,
IPv4 before IPv6, names after) and port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ranking is imported where it ranks: a reader of a finished report
    # (``lewis scan``'s one-chunk path) loads no scanning or CVE-matching code
    from .findings import Finding
    from .scanjob import OpenPort

TERMINAL = ("done", "failed", "cancelled")  # a scan's statuses once it has ended
CONNECT_SHARE = 0.9  # of a scan's progress bar: the connects; the rest, chunks finished


@dataclass(frozen=True)
class ScanProgress:
    """How far a scan has come, readable while its chunks still run."""

    scan_id: str
    status: str
    chunks_total: int
    chunks_done: int
    ports_total: int
    ports_done: int
    open_count: int

    @property
    def fraction(self) -> float:
        """Share of the work done, 0.0–1.0 (1.0 for an empty scan): connecting to the ports
        fills :data:`CONNECT_SHARE` of it, finished chunks (services identified, stored) the
        rest, so a scan whose ports are all tried but whose services are still being
        identified does not show 100 %."""
        if not self.ports_total:
            return 1.0
        ports = min(1.0, self.ports_done / self.ports_total)
        chunks = min(1.0, self.chunks_done / self.chunks_total) if self.chunks_total else ports
        return CONNECT_SHARE * ports + (1.0 - CONNECT_SHARE) * chunks

    @property
    def phase(self) -> str:
        """What the scan is doing: ``connecting``, ``identifying`` (every port tried, chunks
        still identifying services and storing), or its status once it has ended."""
        if self.status != "running":
            return self.status
        if self.ports_total and self.ports_done >= self.ports_total:
            return "identifying"
        return "connecting"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction, "phase": self.phase}


@dataclass(frozen=True)
class ChunkResult:
    """What one recorded chunk counted besides its open ports (its stored JSON result)."""

    address: str | None
    filtered: int = 0
    closed: int = 0
    unidentified: tuple[int, ...] = ()
    timed_out: bool = False  # its deadline stopped the port scan: some ports were not settled

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChunkResult:
        address = data.get("address")
        return cls(
            None if address is None else str(address),
            int(data.get("filtered") or 0),
            int(data.get("closed") or 0),
            tuple(int(p) for p in data.get("unidentified") or ()),
            bool(data.get("timed_out")),
        )


@dataclass(frozen=True)
class HostReport:
    """One scanned host: its open ports (with services), and how many were filtered/closed."""

    address: str
    hostname: str | None
    open_ports: tuple[dict[str, Any], ...]
    filtered: int = 0
    closed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "hostname": self.hostname,
            "open_ports": [dict(p) for p in self.open_ports],
            "filtered": self.filtered,
            "closed": self.closed,
        }


@dataclass(frozen=True)
class ReportBody:
    """What :func:`build_report` gives: hosts in address order, findings ranked, the counts."""

    hosts: tuple[HostReport, ...]
    findings: tuple[Finding, ...]
    summary: dict[str, Any]


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScanReport:
        """The report :meth:`to_dict` gave (a task's result carries it back to the caller)."""
        progress = {k: v for k, v in data["progress"].items() if k not in ("fraction", "phase")}
        return cls(
            str(data["scan_id"]),
            str(data["status"]),
            dict(data.get("request") or {}),
            data.get("created_at"),
            data.get("finished_at"),
            ScanProgress(**progress),
            tuple(
                HostReport(
                    h["address"],
                    h.get("hostname"),
                    tuple(dict(p) for p in h.get("open_ports") or ()),
                    int(h.get("filtered") or 0),
                    int(h.get("closed") or 0),
                )
                for h in data.get("hosts") or ()
            ),
            tuple(dict(f) for f in data.get("findings") or ()),
            dict(data.get("summary") or {}),
            data.get("error"),
        )

    def to_dict(self) -> dict[str, Any]:
        request = {k: v for k, v in self.request.items() if k != "target_rows"}
        return {
            "scan_id": self.scan_id,
            "status": self.status,
            "request": request,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "progress": self.progress.to_dict(),
            "summary": dict(self.summary),
            "error": self.error,
            "hosts": [h.to_dict() for h in self.hosts],
            "findings": [dict(f) for f in self.findings],
        }


def build_report(
    chunks: Sequence[ChunkResult],
    ports: Sequence[OpenPort],
    findings: Iterable[Finding],
    planned: Sequence[tuple[str, str | None]] = (),
) -> ReportBody:
    """The report of a scan: every planned host (``(address, hostname)``) and every host with a
    recorded chunk or open port, in address order, each with its open ports and its
    filtered/closed counts; the findings ranked; the summary the merge stores."""
    from .findings import address_key, rank_findings

    ranked = tuple(rank_findings(findings))
    names: dict[str, str | None] = {address: hostname for address, hostname in planned}
    counts: dict[str, list[int]] = {}
    for c in chunks:
        tally = counts.setdefault(str(c.address), [0, 0])
        tally[0] += c.filtered
        tally[1] += c.closed
    by_host: dict[str, list[OpenPort]] = {address: [] for address in names}
    for port in ports:
        by_host.setdefault(port.address, []).append(port)
    hosts = tuple(
        HostReport(
            address,
            names.get(address),
            tuple(_port_entry(p) for p in sorted(found, key=_port_number)),
            *counts.get(address, [0, 0]),
        )
        for address, found in sorted(by_host.items(), key=lambda i: address_key(i[0]))
    )
    return ReportBody(hosts, ranked, _summary(chunks, ports, ranked))


def finding_entry(f: Finding) -> dict[str, Any]:
    """A finding as the report lists it (JSON)."""
    return {
        "severity": f.severity,
        "host": f.address,
        "port": f.port,
        "service": f.service,
        "product": f.product,
        "version": f.version,
        "score": f.score,
        "title": f.title,
        "cve_ids": f.cve_ids,
        "reasons": list(f.reasons),
        "revision": f.revision,
        "conditional_cve_ids": f.conditional_cve_ids,
    }


def _port_number(port: OpenPort) -> int:
    return port.service.port


def _port_entry(port: OpenPort) -> dict[str, Any]:
    s = port.service
    return {
        "port": s.port,
        "state": "open",
        "service": s.name,
        "product": s.product,
        "version": s.version,
        "banner": s.banner,
    }


def _summary(
    chunks: Sequence[ChunkResult], ports: Sequence[OpenPort], findings: Sequence[Finding]
) -> dict[str, Any]:
    from .findings import LEVELS, level_rank

    by_severity = {level: 0 for level in reversed(LEVELS)}
    for f in findings:
        by_severity[f.severity] = by_severity.get(f.severity, 0) + 1
    return {
        "hosts": len({c.address for c in chunks}),
        "open": len(ports),
        "filtered": sum(c.filtered for c in chunks),
        "closed": sum(c.closed for c in chunks),
        "unidentified": sum(len(c.unidentified) for c in chunks),
        "timed_out": sum(1 for c in chunks if c.timed_out),  # chunks cut by their deadline
        "findings": len(findings),
        "by_severity": by_severity,
        "worst": max((f.severity for f in findings), key=level_rank, default=None),
    }


__all__ = [
    "TERMINAL",
    "ScanProgress",
    "ChunkResult",
    "HostReport",
    "ReportBody",
    "ScanReport",
    "build_report",
    "finding_entry",
]
