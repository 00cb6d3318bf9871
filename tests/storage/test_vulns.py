"""Vulnerability import: upserted CVEs, synchronised ranges, re-import writes nothing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from lewis_tasks.errors import InvalidInput
from lewis_tasks.storage import vulns
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import VulnMatchRow

CVE = {
    "cve_id": "CVE-2024-6387",
    "description": "regreSSHion: a signal handler race in OpenSSH's sshd",
    "cvss_version": "3.1",
    "cvss_vector": "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "cvss_score": 8.1,
    "severity": "HIGH",
    "published": "2024-07-01T13:15:06.467",
    "modified": "2024-11-21T09:49:29.803",
    "matches": [
        {
            "vendor": "OpenBSD",
            "product": "OpenSSH",
            "version_start_including": "8.5",
            "version_end_excluding": "9.8",
        },
        {"vendor": "openbsd", "product": "openssh", "version_end_excluding": "4.4"},
    ],
}


@dataclass(frozen=True)
class Record:  # what a domain parser would hand over
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _ids(engine: Engine) -> list[int]:
    with session_scope(engine) as s:
        return list(s.scalars(select(VulnMatchRow.id).order_by(VulnMatchRow.id)))


def test_import_then_reimport_is_a_no_op(engine: Engine) -> None:
    with session_scope(engine) as s:
        first = vulns.import_vulnerabilities(s, [CVE])
    assert first.to_dict() == {
        "cves_seen": 1,
        "cves_written": 1,
        "ranges_added": 2,
        "ranges_removed": 0,
    }
    before = _ids(engine)
    with session_scope(engine) as s:
        again = vulns.import_vulnerabilities(s, [Record(CVE)])
    assert again == vulns.ImportSummary(cves_seen=1)
    assert _ids(engine) == before
    with session_scope(engine) as s:
        cve = vulns.get_vulnerability(s, "cve-2024-6387".upper())
        assert cve is not None and cve.cvss_score == 8.1
        assert cve.published == dt.datetime(2024, 7, 1, 13, 15, 6, 467000, tzinfo=dt.UTC)


def test_changed_cve_and_ranges_are_updated(engine: Engine) -> None:
    with session_scope(engine) as s:
        vulns.import_vulnerabilities(s, [CVE])
    changed = {**CVE, "cvss_score": 8.2, "matches": [CVE["matches"][0]]}
    with session_scope(engine) as s:
        summary = vulns.import_vulnerabilities(s, [changed])
    assert (summary.cves_written, summary.ranges_added, summary.ranges_removed) == (1, 0, 1)
    with session_scope(engine) as s:
        ranges = vulns.candidate_ranges(s, "OPENBSD", "openssh")
    assert [(r.version_start_including, r.version_end_excluding, r.cvss_score) for r in ranges] == [
        ("8.5", "9.8", 8.2)
    ]
    assert ranges[0].to_dict()["cve_id"] == "CVE-2024-6387"


def test_candidate_ranges_by_vendor_and_product(engine: Engine) -> None:
    other = {
        "cve_id": "CVE-2023-0001",
        "cvss_score": 5.0,
        "matches": [{"vendor": "redis", "product": "redis", "version_exact": "7.0.0"}],
    }
    with session_scope(engine) as s:
        vulns.import_vulnerabilities(s, [CVE, other], batch_size=1)
    with session_scope(engine) as s:
        assert len(vulns.candidate_ranges(s, "openbsd", "openssh")) == 2
        redis_ranges = vulns.candidate_ranges(s, "redis", "redis")
        assert [r.version_exact for r in redis_ranges] == ["7.0.0"]
        assert vulns.candidate_ranges(s, "nobody", "nothing") == []


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"description": "no id"}, "without a cve_id"),
        ({"cve_id": "CVE-1", "published": "yesterday"}, "published is not an ISO 8601"),
        ({"cve_id": "CVE-1", "matches": [{"product": "x"}]}, "needs vendor and product"),
    ],
)
def test_bad_records_are_refused_readably(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        vulns.import_vulnerabilities(None, [bad])  # type: ignore[arg-type]  # fails before any SQL


def test_domain_records_round_trip_and_match_the_same(engine: Engine) -> None:
    from lewis_tasks.domain.vulns import PRODUCT_CPES, find_cves, sample_records

    # Given the shipped sample feed, parsed by the domain layer, imported twice
    records = sample_records()
    with session_scope(engine) as s:
        first = vulns.import_vulnerabilities(s, records)
    with session_scope(engine) as s:
        again = vulns.import_vulnerabilities(s, records)
    assert first.cves_written == len(records) and first.ranges_added > len(records)
    assert again == vulns.ImportSummary(cves_seen=len(records))
    # Then what comes back is the same records (times aside, which become UTC-aware ISO)
    by_id = {r.cve_id: r for r in records}
    with session_scope(engine) as s:
        for product, keys in PRODUCT_CPES.items():
            for key in keys:
                vendor, name = key.split(":")
                back = vulns.cve_records_for(s, vendor, name)
                for rec in back:
                    original = by_id[rec.cve_id]
                    assert (rec.cvss, rec.ranges, rec.description) == (
                        original.cvss,
                        original.ranges,
                        original.description,
                    )
                # and matching on them finds what matching on the feed finds
                versions = {
                    b
                    for rec in back
                    for r in rec.ranges
                    for b in (r.version, r.start_including, r.end_including, r.end_excluding)
                    if b and b not in ("*", "-")
                }
                assert versions or not back
                for version in versions:
                    found = [r.cve_id for r in find_cves(product, version, back)]
                    assert found == [r.cve_id for r in find_cves(product, version, records)]


def test_real_nvd_configurations_survive_the_import(engine: Engine) -> None:
    """CPE "-" (CVE-2022-0543), letter releases (CVE-2019-12815) and a CVSS v4.0 metric
    (CVE-2024-7347) come back from the database as the feed had them."""
    from pathlib import Path

    from lewis_tasks.domain.vulns import find_cves, load_feed

    records = load_feed(Path(__file__).parents[1] / "domain" / "data" / "nvd-configurations.json")
    with session_scope(engine) as s:
        vulns.import_vulnerabilities(s, records)
    by_id = {r.cve_id: r for r in records}
    with session_scope(engine) as s:
        redis = vulns.cve_records_for(s, "redis", "redis")
        proftpd = vulns.cve_records_for(s, "proftpd", "proftpd")
        v4 = vulns.get_vulnerability(s, "CVE-2024-7347")
        assert v4 is not None and (v4.cvss_version, v4.cvss_score, v4.severity) == (
            "4.0",
            5.7,
            "medium",
        )
    assert [r.ranges for r in redis] == [by_id["CVE-2022-0543"].ranges]
    assert redis[0].ranges[0].version == "-" and redis[0].ranges[0].platforms
    assert find_cves("Redis", "7.0.15", redis) == []
    assert [r.cve_id for r in find_cves("ProFTPD", "1.3.5b", proftpd)] == ["CVE-2019-12815"]
    assert find_cves("ProFTPD", "1.3.5c", proftpd) == []
