"""Findings: exposure rules, CVE severities from CVSS, and the ranking."""

from __future__ import annotations

import json

import pytest

from lewis_tasks.domain.findings import (
    LEVELS,
    Finding,
    assess,
    build_findings,
    level_rank,
    rank_findings,
)
from lewis_tasks.domain.services import ServiceInfo
from lewis_tasks.domain.vulns import find_cves, sample_records

HOST = "127.0.0.1"


@pytest.mark.parametrize(
    "info, severity",
    [
        (ServiceInfo(6379, "redis", "Redis", None, extra={"auth_required": False}), "critical"),
        (ServiceInfo(6379, "redis", "Redis", None, extra={"auth_required": True}), "low"),
        (ServiceInfo(6379, "redis", "Redis"), "low"),  # AUTH unknown: not claimed open
        (ServiceInfo(11211, "memcached", "memcached", "1.6.14"), "high"),
        (ServiceInfo(23, "telnet"), "high"),
        (ServiceInfo(21, "ftp"), "medium"),
        (ServiceInfo(5900, "vnc"), "medium"),
        (ServiceInfo(3306, "mysql", "MySQL", "8.0.36"), "low"),
        (ServiceInfo(5432, "postgresql", "PostgreSQL"), "low"),
        (ServiceInfo(110, "pop3"), "low"),
        (ServiceInfo(22, "ssh", "OpenSSH", "9.9p1"), "info"),
        (ServiceInfo(80, "http", "nginx", "1.27.0"), "info"),
        (ServiceInfo(4444, "unknown"), "info"),
    ],
)
def test_exposure_rules(info: ServiceInfo, severity: str) -> None:
    finding = assess(HOST, info)
    assert finding.severity == severity
    assert finding.score == 0.0 and finding.cves == ()
    assert finding.title == finding.reasons[0]


def test_a_redis_without_auth_is_critical_and_says_why() -> None:
    finding = assess(
        HOST, ServiceInfo(6379, "redis", "Redis", None, extra={"auth_required": False})
    )
    assert "without authentication" in finding.title


def test_cves_raise_the_severity_to_their_cvss_band() -> None:
    info = ServiceInfo(22, "ssh", "OpenSSH", "8.9p1")
    finding = assess(HOST, info, find_cves(info.product, info.version, sample_records()))
    assert finding.severity == "critical"  # CVE-2023-38408, CVSS 9.8
    assert finding.score == 9.8
    assert finding.cve_ids == ["CVE-2023-38408", "CVE-2024-6387"]  # worst first
    assert "CVE-2023-38408" in finding.title and "9.8" in finding.title


def test_a_milder_cve_does_not_lower_a_rule() -> None:
    info = ServiceInfo(6379, "redis", "Redis", "7.0.10", extra={"auth_required": False})
    records = [r for r in sample_records() if r.cve_id == "CVE-2023-28856"]  # 6.5, medium
    finding = assess(HOST, info, find_cves(info.product, info.version, records))
    assert finding.severity == "critical" and finding.score == 6.5
    assert "without authentication" in finding.title
    assert len(finding.reasons) == 2 and "CVE-2023-28856" in finding.reasons[1]


def test_platform_specific_cves_are_not_matched_on_a_bare_banner() -> None:
    # CVE-2022-0543 is redis:- AND Debian/Ubuntu: no Redis version, no visible platform
    info = ServiceInfo(6379, "redis", "Redis", "6.0.16", extra={"auth_required": True})
    finding = assess(HOST, info, find_cves(info.product, info.version, sample_records()))
    assert [c.cve_id for c in finding.cves] == ["CVE-2023-28856"]
    assert finding.cves[0].platforms == () and not finding.cves[0].conditional


def test_findings_rank_critical_first_then_score_then_address_and_port() -> None:
    services = [
        ServiceInfo(80, "http", "Apache httpd", "2.4.49"),  # high 7.5 (CVE-2021-41773)
        ServiceInfo(23, "telnet"),  # high, no score
        ServiceInfo(21, "ftp", "vsftpd", "2.3.4"),  # critical 9.8
        ServiceInfo(6379, "redis", "Redis", None, extra={"auth_required": False}),  # critical 0
        ServiceInfo(22, "ssh", "OpenSSH", "9.9p1"),  # info
        ServiceInfo(11211, "memcached", "memcached", "1.4.31"),  # critical 9.8 (CVE-2016-8704)
    ]
    ranked = build_findings(HOST, services, sample_records())
    assert [(f.severity, f.port) for f in ranked] == [
        ("critical", 21),
        ("critical", 11211),
        ("critical", 6379),
        ("high", 80),
        ("high", 23),
        ("info", 22),
    ]


def test_ties_break_on_numeric_address_then_port() -> None:
    def finding(address: str, port: int) -> Finding:
        return assess(address, ServiceInfo(port, "telnet"))

    ranked = rank_findings(
        [
            finding("::1", 23),
            finding("127.0.0.10", 23),
            finding("127.0.0.9", 2323),
            finding("127.0.0.9", 23),
        ]
    )
    assert [(f.address, f.port) for f in ranked] == [
        ("127.0.0.9", 23),
        ("127.0.0.9", 2323),
        ("127.0.0.10", 23),
        ("::1", 23),
    ]


def test_findings_are_json() -> None:
    ranked = build_findings(
        HOST, [ServiceInfo(22, "ssh", "OpenSSH", "8.9p1")], sample_records(), hostname="localhost"
    )
    data = json.loads(json.dumps([f.to_dict() for f in ranked]))
    assert data[0]["hostname"] == "localhost" and data[0]["severity"] == "critical"
    assert [c["cve_id"] for c in data[0]["cves"]] == ["CVE-2023-38408", "CVE-2024-6387"]


def test_levels_are_ordered() -> None:
    assert [level_rank(level) for level in LEVELS] == [0, 1, 2, 3, 4]
    assert level_rank("none") == 0
