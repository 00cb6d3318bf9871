"""Vulnerability data: CVEs and the CPE version ranges they affect.

:func:`import_vulnerabilities` takes plain records (parsed from NVD feeds by the domain layer)
and upserts them: an unchanged CVE is left alone, a changed one is updated, and each CVE's
ranges are synchronised by a digest of their values, so importing the same feed twice writes
nothing. Vendor and product are stored lower-case, as CPE compares them.

Two record layouts are accepted: the flat one below (``cvss_score``, ``matches`` with
``version_*`` bounds) and the domain's :class:`~lewis_tasks.domain.vulns.CveRecord`
(``cvss`` metric, ``ranges``), which :func:`cve_records_for` gives back intact for matching.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..domain.vulns import CveRecord
from ..errors import InvalidInput
from .models import VulnerabilityRow, VulnMatchRow
from .rows import fetch, upsert

CVE_FIELDS = (
    "description",
    "cvss_version",
    "cvss_vector",
    "cvss_score",
    "severity",
    "published",
    "modified",
    "detail",
)
RANGE_FIELDS = (
    "version_exact",
    "version_start_including",
    "version_start_excluding",
    "version_end_including",
    "version_end_excluding",
)
_BOUNDS = ("start_including", "start_excluding", "end_including", "end_excluding")
_RANGE_DETAIL = ("version", "update", "vulnerable", "platforms")  # the domain's CPE fields


@dataclass(frozen=True)
class ImportSummary:
    """What an import changed; all zeros for a re-import of the same data."""

    cves_seen: int = 0
    cves_written: int = 0
    ranges_added: int = 0
    ranges_removed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CandidateRange:
    """One CPE range of a CVE, with the CVE's score: the input of version matching."""

    cve_id: str
    vendor: str
    product: str
    version_exact: str | None
    version_start_including: str | None
    version_start_excluding: str | None
    version_end_including: str | None
    version_end_excluding: str | None
    cvss_score: float | None
    cvss_vector: str | None
    severity: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_vulnerabilities(
    session: Session, records: Iterable[Any], batch_size: int = 500
) -> ImportSummary:
    """Upsert CVE records (mappings, or objects with ``to_dict()``) and their ``matches``.

    A record needs ``cve_id``; ``matches`` lists ranges with ``vendor``, ``product`` and the
    ``version_*`` bounds. Ranges a CVE no longer lists are removed.
    """
    seen = written = added = removed = 0
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(_normalise(record))
        if len(batch) >= batch_size:
            w, a, r = _import_batch(session, batch)
            seen, written, added, removed = seen + len(batch), written + w, added + a, removed + r
            batch = []
    if batch:
        w, a, r = _import_batch(session, batch)
        seen, written, added, removed = seen + len(batch), written + w, added + a, removed + r
    return ImportSummary(seen, written, added, removed)


def candidate_ranges(session: Session, vendor: str, product: str) -> list[CandidateRange]:
    """Every range recorded for ``vendor``/``product`` (uses idx_vuln_matches_vendor_product)."""
    stmt = (
        select(VulnMatchRow, VulnerabilityRow)
        .join(VulnerabilityRow, VulnerabilityRow.cve_id == VulnMatchRow.cve_id)
        .where(VulnMatchRow.vendor == vendor.lower(), VulnMatchRow.product == product.lower())
        .order_by(VulnMatchRow.cve_id, VulnMatchRow.id)
    )
    return [
        CandidateRange(
            cve_id=m.cve_id,
            vendor=m.vendor,
            product=m.product,
            **{f: getattr(m, f) for f in RANGE_FIELDS},
            cvss_score=v.cvss_score,
            cvss_vector=v.cvss_vector,
            severity=v.severity,
        )
        for m, v in session.execute(stmt)
    ]


@dataclass(frozen=True)
class StoredCves:
    """The stored CVEs as a scan's merge looks them up (infra/vulnlookup.py's CveSource), each
    call in a session of its own from ``sessions``."""

    sessions: Callable[[], AbstractContextManager[Session]]

    def records_for(self, vendor: str, product: str) -> list[CveRecord]:
        with self.sessions() as session:
            return cve_records_for(session, vendor, product)


def get_vulnerability(session: Session, cve_id: str) -> VulnerabilityRow | None:
    """One CVE, or None."""
    return fetch(session, VulnerabilityRow, cve_id)


def cve_records_for(session: Session, vendor: str, product: str) -> list[CveRecord]:
    """The CVEs with a range on ``vendor``/``product``, as domain records (all their ranges),
    ready for :func:`lewis_tasks.domain.vulns.find_cves`."""
    ids = select(VulnMatchRow.cve_id).where(
        VulnMatchRow.vendor == vendor.lower(), VulnMatchRow.product == product.lower()
    )
    cves = session.scalars(
        select(VulnerabilityRow)
        .where(VulnerabilityRow.cve_id.in_(ids))
        .order_by(VulnerabilityRow.cve_id)
    ).all()
    ranges: dict[str, list[dict[str, Any]]] = {}
    for m in session.scalars(
        select(VulnMatchRow).where(VulnMatchRow.cve_id.in_(ids)).order_by(VulnMatchRow.id)
    ):
        ranges.setdefault(m.cve_id, []).append(_domain_range(m))
    return [
        CveRecord.from_dict(
            {
                "cve_id": v.cve_id,
                "description": v.description or "",
                "cvss": (v.detail or {}).get("cvss") or _cvss_from_columns(v),
                "ranges": ranges.get(v.cve_id, []),
                "published": v.published.isoformat() if v.published else None,
                "last_modified": v.modified.isoformat() if v.modified else None,
            }
        )
        for v in cves
    ]


def _domain_range(m: VulnMatchRow) -> dict[str, Any]:
    detail = m.detail or {}
    return {
        "cve_id": m.cve_id,
        "vendor": m.vendor,
        "product": m.product,
        "version": detail.get("version", m.version_exact or "*"),
        "update": detail.get("update", "*"),
        **{b: getattr(m, f"version_{b}") for b in _BOUNDS},
        "vulnerable": detail.get("vulnerable", True),
        "platforms": detail.get("platforms", []),
    }


def _cvss_from_columns(v: VulnerabilityRow) -> dict[str, Any] | None:
    if not v.cvss_vector or v.cvss_score is None:
        return None
    return {
        "version": v.cvss_version or "",
        "vector": v.cvss_vector,
        "base_score": v.cvss_score,
        "severity": (v.severity or "").lower(),
        "feed_score": None,
    }


def _import_batch(session: Session, batch: list[dict[str, Any]]) -> tuple[int, int, int]:
    cves = [{"cve_id": r["cve_id"], **{f: r.get(f) for f in CVE_FIELDS}} for r in batch]
    written = len(
        upsert(session, VulnerabilityRow, cves, update_cols=list(CVE_FIELDS), only_changed=True)
    )
    wanted = {r["match_key"]: r for rec in batch for r in rec["matches"]}
    ids = [r["cve_id"] for r in batch]
    have = set(session.scalars(select(VulnMatchRow.match_key).where(VulnMatchRow.cve_id.in_(ids))))
    stale = have - wanted.keys()
    if stale:
        session.execute(delete(VulnMatchRow).where(VulnMatchRow.match_key.in_(stale)))
    added = len(
        upsert(
            session, VulnMatchRow, [r for k, r in wanted.items() if k not in have], on=["match_key"]
        )
    )
    return written, added, len(stale)


def _normalise(record: Any) -> dict[str, Any]:
    data = record.to_dict() if hasattr(record, "to_dict") else record
    if not isinstance(data, Mapping) or not data.get("cve_id"):
        raise InvalidInput(f"vulnerability record without a cve_id: {str(record)[:120]!r}")
    cve_id = str(data["cve_id"]).upper()
    out: dict[str, Any] = {"cve_id": cve_id, **{f: data.get(f) for f in CVE_FIELDS}}
    cvss = data.get("cvss")
    if isinstance(cvss, Mapping):  # the domain's layout: one CVSS metric
        out.update(
            cvss_version=cvss.get("version"),
            cvss_vector=cvss.get("vector"),
            cvss_score=cvss.get("base_score"),
            severity=cvss.get("severity"),
            detail={**(out["detail"] or {}), "cvss": dict(cvss)},
        )
    if out["modified"] is None:
        out["modified"] = data.get("last_modified")
    for name in ("published", "modified"):
        out[name] = _timestamp(out[name], cve_id, name)
    if out["cvss_score"] is not None:
        out["cvss_score"] = float(out["cvss_score"])
    ranges = data.get("matches") or data.get("ranges") or ()
    out["matches"] = [_range(cve_id, m) for m in ranges]
    return out


def _range(cve_id: str, match: Mapping[str, Any]) -> dict[str, Any]:
    if not match.get("vendor") or not match.get("product"):
        raise InvalidInput(f"{cve_id}: a match range needs vendor and product, got {dict(match)}")
    version = match.get("version")
    exact = match.get("version_exact")
    if exact is None and version not in (None, "", "*", "-"):
        exact = version  # a CPE naming one version
    row = {
        "cve_id": cve_id,
        "vendor": str(match["vendor"]).lower(),
        "product": str(match["product"]).lower(),
        "version_exact": exact,
        **{f"version_{b}": match.get(f"version_{b}", match.get(b)) for b in _BOUNDS},
    }
    for field in RANGE_FIELDS:
        row[field] = str(row[field]) if row[field] not in (None, "") else None
    detail = {k: match[k] for k in _RANGE_DETAIL if k in match}
    if "platforms" in detail:
        detail["platforms"] = list(detail["platforms"])
    row["detail"] = detail or None
    row["match_key"] = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
    return row


def _timestamp(value: Any, cve_id: str, name: str) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        stamp = value
    else:
        try:
            stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"{cve_id}: {name} is not an ISO 8601 time: {value!r}") from None
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)  # NVD writes UTC without saying so
    return stamp


__all__ = [
    "ImportSummary",
    "CandidateRange",
    "import_vulnerabilities",
    "candidate_ranges",
    "cve_records_for",
    "get_vulnerability",
    "StoredCves",
]
