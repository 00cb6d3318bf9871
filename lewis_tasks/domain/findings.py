"""Findings: one per open port, with a severity from exposure rules and from known CVEs.

Rules judge what is exposed: unauthenticated data stores (a Redis answering ``PING`` without
AUTH is critical, memcached is high), cleartext remote administration (telnet high, ftp
medium), cleartext mail and exposed databases (low); anything else open is ``info``. Each CVE
that applies to the identified product/version raises the severity to its CVSS band. Findings
rank critical first, then by the highest CVSS base score, then by address and port.

Every CVE match rests on the version a banner states, nothing more ("version only"): a
distribution that backports fixes keeps the upstream version, so the revision a banner adds
(``OpenSSH_9.2p1 Debian-2+deb12u10``) is kept on the finding and shown beside its CVEs. A CVE
whose NVD configuration also needs a platform the scanner cannot see (an OS, a packaging) is
listed as *conditional*, naming that platform, and neither raises the severity nor the score.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .services import UNKNOWN, ServiceInfo
from .vulns import CveRecord, find_cves, platform_condition

LEVELS = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class CveRef:
    """A CVE as a finding cites it."""

    cve_id: str
    score: float
    severity: str
    platforms: tuple[str, ...] = ()  # applies only on these (an AND configuration)

    @property
    def conditional(self) -> bool:
        """True if it applies only on a platform the scanner cannot see."""
        return bool(self.platforms)

    def to_dict(self) -> dict[str, object]:
        return {
            "cve_id": self.cve_id,
            "score": self.score,
            "severity": self.severity,
            "platforms": list(self.platforms),
            "conditional": self.conditional,
            "basis": "version",
        }


@dataclass(frozen=True)
class Finding:
    """What one open port means for security."""

    address: str
    port: int
    service: str
    product: str | None
    version: str | None
    severity: str
    score: float  # highest CVSS base score of its CVEs; 0.0 without any
    title: str
    reasons: tuple[str, ...]
    cves: tuple[CveRef, ...] = ()  # the version matches, conditional ones included
    hostname: str | None = None
    revision: str | None = None  # the distribution revision the banner adds to the version

    @property
    def cve_ids(self) -> list[str]:
        """The CVEs that apply on the version alone (conditional ones are not counted)."""
        return [c.cve_id for c in self.cves if not c.conditional]

    @property
    def conditional_cve_ids(self) -> list[str]:
        return [c.cve_id for c in self.cves if c.conditional]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """The finding :meth:`to_dict` gave (as the merge stored it)."""
        return cls(
            str(data["address"]),
            int(data["port"]),
            str(data["service"]),
            data.get("product"),
            data.get("version"),
            str(data["severity"]),
            float(data.get("score") or 0.0),
            str(data["title"]),
            tuple(str(r) for r in data.get("reasons") or ()),
            tuple(
                CveRef(
                    str(c["cve_id"]),
                    float(c["score"]),
                    str(c["severity"]),
                    tuple(c.get("platforms") or ()),
                )
                for c in data.get("cves") or ()
            ),
            data.get("hostname"),
            data.get("revision"),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "hostname": self.hostname,
            "port": self.port,
            "service": self.service,
            "product": self.product,
            "version": self.version,
            "revision": self.revision,
            "severity": self.severity,
            "score": self.score,
            "title": self.title,
            "reasons": list(self.reasons),
            "cves": [c.to_dict() for c in self.cves],
            "conditional_cve_ids": self.conditional_cve_ids,
        }


@dataclass(frozen=True)
class Rule:
    """An exposure rule: when it applies to a service, the severity and why."""

    service: str
    severity: str
    title: str
    applies: Callable[[ServiceInfo], bool] = lambda info: True


RULES: tuple[Rule, ...] = (
    Rule(
        "redis",
        "critical",
        "Redis answers without authentication: anyone reaching it can "
        "read and write all data and, through CONFIG/MODULE, run code",
        lambda info: info.extra.get("auth_required") is False,
    ),
    Rule("redis", "low", "Redis reachable from the network (AUTH required)"),
    Rule(
        "memcached",
        "high",
        "memcached has no authentication: data readable and writable by anyone reaching it",
    ),
    Rule(
        "telnet",
        "high",
        "Cleartext remote administration (telnet): credentials cross the network unencrypted",
    ),
    Rule(
        "ftp", "medium", "Cleartext file transfer (FTP): credentials cross the network unencrypted"
    ),
    Rule("vnc", "medium", "Remote desktop (VNC) reachable from the network"),
    Rule("mysql", "low", "Database server reachable from the network"),
    Rule("postgresql", "low", "Database server reachable from the network"),
    Rule("pop3", "low", "Cleartext mail access protocol (POP3)"),
    Rule("imap", "low", "Cleartext mail access protocol (IMAP)"),
    Rule("smtp", "low", "Mail server reachable from the network"),
)


def level_rank(severity: str) -> int:
    """info 0 … critical 4; a CVSS band "none" ranks as info."""
    return LEVELS.index(severity) if severity in LEVELS else 0


def assess(
    address: str, info: ServiceInfo, cves: Sequence[CveRecord] = (), hostname: str | None = None
) -> Finding:
    """The finding for one open port from its service and the CVEs that apply to it."""
    rule = next((r for r in RULES if r.service == info.name and r.applies(info)), None)
    label = _label(info)
    severity = rule.severity if rule else "info"
    reasons = [rule.title] if rule else [f"Open port: {label}"]
    title = reasons[0]
    refs = tuple(
        CveRef(
            c.cve_id,
            c.score,
            c.severity if c.severity in LEVELS else "info",
            platform_condition(c, info.product, info.version) or (),
        )
        for c in cves
    )
    counted = [c for c in refs if not c.conditional]
    revision = _revision(info)
    if counted:
        worst = max(counted, key=lambda c: (c.score, c.cve_id))
        basis = f"version only, banner says {revision}" if revision else "version only"
        reasons.append(
            f"{label}: {len(counted)} known CVE{'s' * (len(counted) > 1)} ({basis}), "
            f"worst {worst.cve_id} (CVSS {worst.score:.1f}, {worst.severity})"
        )
        if level_rank(worst.severity) > level_rank(severity):
            severity, title = worst.severity, reasons[-1]
    for ref in refs:
        if ref.conditional:
            reasons.append(
                f"{ref.cve_id} (CVSS {ref.score:.1f}) applies only on "
                f"{', '.join(ref.platforms)}, which a banner does not show: "
                "not counted, check the host"
            )
    score = max((c.score for c in counted), default=0.0)
    return Finding(
        address,
        info.port,
        info.name,
        info.product,
        info.version,
        severity,
        score,
        title,
        tuple(reasons),
        tuple(sorted(refs, key=lambda c: (-c.score, c.cve_id))),
        hostname,
        revision,
    )


def build_findings(
    address: str,
    services: Iterable[ServiceInfo],
    records: Sequence[CveRecord],
    hostname: str | None = None,
) -> list[Finding]:
    """A ranked finding per service, CVEs looked up in ``records``."""
    findings = [
        assess(address, info, find_cves(info.product, info.version, records), hostname)
        for info in services
    ]
    return rank_findings(findings)


def rank_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by highest CVSS score, then by address and port."""
    return sorted(
        findings, key=lambda f: (-level_rank(f.severity), -f.score, address_key(f.address), f.port)
    )


def _label(info: ServiceInfo) -> str:
    if info.name == UNKNOWN:
        return f"{info.port}/tcp (service unknown)"
    if info.name.endswith("?"):
        return f"{info.port}/tcp ({info.name} — named from the port number, no answer said so)"
    what = " ".join(p for p in (info.product, info.version) if p)
    return f"{info.name} ({what})" if what else info.name


def _revision(info: ServiceInfo) -> str | None:
    value = info.extra.get("revision")
    return str(value) if value else None


def address_key(address: str) -> tuple[int, int, str]:
    """Sort key of a host: IPv4 numerically, then IPv6 numerically, then names."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return (9, 0, address)
    return (addr.version, int(addr), "")


__all__ = [
    "LEVELS",
    "CveRef",
    "Finding",
    "Rule",
    "RULES",
    "level_rank",
    "assess",
    "build_findings",
    "rank_findings",
    "address_key",
]
