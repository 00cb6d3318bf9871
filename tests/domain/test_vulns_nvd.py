"""CVE matching on real NVD records (tests/domain/data/nvd-configurations.json, transcribed
from NVD's published JSON; see the .sources.txt beside it): configurations, CPE ``-`` vs ``*``,
how products number releases, CVSS v4.0."""

from __future__ import annotations

from pathlib import Path

import pytest

from lewis_tasks.domain.findings import assess
from lewis_tasks.domain.services import ServiceInfo, match_answer
from lewis_tasks.domain.vulns import (
    CpeRange,
    CveRecord,
    compare_versions,
    find_cves,
    load_feed,
    match,
    platform_condition,
    sample_records,
)

FIXTURE = Path(__file__).parent / "data" / "nvd-configurations.json"


@pytest.fixture  # per test: mutmut maps a function to the tests that call it
def nvd() -> dict[str, CveRecord]:
    return {r.cve_id: r for r in load_feed(FIXTURE)}


def ranges(records: dict[str, CveRecord]) -> list[CpeRange]:
    return [r for rec in records.values() for r in rec.ranges]


# ---------------------------------------------------------------- CVE-2022-0543: redis:- AND OS


@pytest.mark.parametrize("version", ["7.0.15", "6.0.16", "5.0.7", "2.8.0"])
def test_cve_2022_0543_does_not_match_a_bare_redis_banner(
    nvd: dict[str, CveRecord], version: str
) -> None:
    record = nvd["CVE-2022-0543"]
    assert find_cves("Redis", version, [record]) == []
    assert platform_condition(record, "Redis", version) is None


def test_the_readme_example_redis_7_0_15_is_not_critical_by_cve_2022_0543() -> None:
    info = ServiceInfo(6379, "redis", "Redis", "7.0.15", extra={"auth_required": True})
    found = find_cves(info.product, info.version, sample_records())
    finding = assess("127.0.0.1", info, found)
    assert finding.cve_ids == [] and finding.severity == "low"  # the exposure rule only


def test_cpe_dash_is_not_applicable_and_star_is_any_version() -> None:
    dash = CpeRange("CVE-X", "redis", "redis", version="-")
    star = CpeRange("CVE-X", "redis", "redis", version="*")
    assert not any(dash.matches(v) for v in ("0.1", "7.0.15", "-", "99"))
    assert all(star.matches(v) for v in ("0.1", "7.0.15", "99"))


# ---------------------------------------------------------------- AND with a platform, versioned


def and_record(app_bounds: dict[str, str]) -> CveRecord:
    """An AND configuration like NVD writes one: a vulnerable application range, and a
    non-vulnerable OS entry it runs on (the shape of CVE-2022-0543, with a version range)."""
    from lewis_tasks.domain.vulns import parse_cve

    return parse_cve(
        {
            "id": "CVE-2099-0001",
            "metrics": {},
            "configurations": [
                {
                    "operator": "AND",
                    "nodes": [
                        {
                            "operator": "OR",
                            "negate": False,
                            "cpeMatch": [
                                {
                                    "vulnerable": True,
                                    "criteria": "cpe:2.3:a:openbsd:openssh:*:*:*:*:*:*:*:*",
                                    **app_bounds,
                                }
                            ],
                        },
                        {
                            "operator": "OR",
                            "negate": False,
                            "cpeMatch": [
                                {
                                    "vulnerable": False,
                                    "criteria": "cpe:2.3:o:debian:debian_linux:12.0:*:*:*:*:*:*:*",
                                }
                            ],
                        },
                    ],
                }
            ],
        }
    )


def test_a_versioned_and_configuration_is_conditional_on_its_platform() -> None:
    record = and_record({"versionEndExcluding": "9.3"})
    assert platform_condition(record, "OpenSSH", "9.2p1") == ("debian:debian_linux",)
    assert platform_condition(record, "OpenSSH", "9.3p1") is None
    assert platform_condition(record, "OpenSSH", None) is None
    assert platform_condition(record, "nginx", "9.2") is None
    finding = assess(
        "127.0.0.1",
        ServiceInfo(22, "ssh", "OpenSSH", "9.2p1"),
        find_cves("OpenSSH", "9.2p1", [record]),
    )
    # said, but not counted: the scanner cannot see the OS
    assert finding.severity == "info" and finding.score == 0.0 and finding.cve_ids == []
    assert finding.conditional_cve_ids == ["CVE-2099-0001"]
    assert any("debian:debian_linux" in r and "not counted" in r for r in finding.reasons)
    assert finding.to_dict()["cves"][0]["conditional"] is True


def test_an_unconditional_range_beside_a_conditional_one_counts() -> None:
    record = and_record({"versionEndExcluding": "9.3"})
    plain = CpeRange("CVE-2099-0001", "openbsd", "openssh", end_excluding="9.0")
    both = CveRecord(record.cve_id, "", None, (*record.ranges, plain))
    assert platform_condition(both, "OpenSSH", "8.9p1") == ()
    assert platform_condition(both, "OpenSSH", "9.1") == ("debian:debian_linux",)


# ---------------------------------------------------------------- version numbering


@pytest.mark.parametrize(
    "lower, higher",
    [
        ("1.3.5", "1.3.5a"),
        ("1.3.5a", "1.3.5b"),
        ("1.3.5b", "1.3.6"),
        ("1.3.5rc4", "1.3.5"),
        ("1.1.1", "1.1.1a"),
        ("1.1.1t", "1.1.1w"),
        ("1.0.2z", "1.0.2zg"),
        ("8.9", "8.9p1"),
        ("2.4.49-rc1", "2.4.49"),
        ("1.0-dev", "1.0-alpha"),
        ("1.0alpha", "1.0beta"),
        ("1.0beta2", "1.0rc1"),
        ("1.0rc1", "1.0"),
        ("1.0-snapshot", "1.0-alpha"),
        ("7.0", "7.0.1"),
        ("1.0a", "1.0.1"),
        ("1.0rc1", "1.0a"),
        ("6.9", "7.0"),
    ],
)
def test_versions_order_as_products_number_them(lower: str, higher: str) -> None:
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, lower) == 1


@pytest.mark.parametrize(
    "a, b",
    [
        ("7.0", "7.0.0"),
        ("7", "7.0.0.0"),
        ("1.3.5a", "1.3.5a"),
        ("1.0RC1", "1.0rc1"),
        ("1.0pre", "1.0rc"),
    ],
)
def test_equal_versions(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0 and compare_versions(b, a) == 0


@pytest.mark.parametrize(
    "version, hit",
    [
        ("1.3.5", True),
        ("1.3.5a", True),
        ("1.3.5b", True),
        ("1.3.5c", False),
        ("1.3.6", False),
        ("1.3.6rc1", False),
        ("1.3.5rc3", True),
        ("1.3.3", True),
    ],
)
def test_cve_2019_12815_proftpd_up_to_1_3_5b(
    nvd: dict[str, CveRecord], version: str, hit: bool
) -> None:
    assert (find_cves("ProFTPD", version, [nvd["CVE-2019-12815"]]) != []) is hit


def test_cve_2019_12815_keeps_only_application_entries(nvd: dict[str, CveRecord]) -> None:
    # Fedora/Debian (o:) and the Siemens firmware AND hardware configuration are not services
    assert [r.key for r in nvd["CVE-2019-12815"].ranges] == ["proftpd:proftpd"]


@pytest.mark.parametrize(
    "version, hit",
    [
        ("1.1.1", True),
        ("1.1.1s", True),
        ("1.1.1t", False),
        ("1.1.1w", False),
        ("1.1.0l", False),
        ("1.0.2zf", True),
        ("1.0.2zg", False),
        ("3.0.7", True),
        ("3.0.8", False),
        ("3.0", True),
        ("3.0.0-alpha1", False),
    ],
)
def test_cve_2023_0286_openssl_letter_releases(
    nvd: dict[str, CveRecord], version: str, hit: bool
) -> None:
    assert (match("openssl:openssl", version, nvd["CVE-2023-0286"].ranges) != []) is hit


# ---------------------------------------------------------------- CVSS v4.0


def test_cvss_v4_is_read_before_v3_1(nvd: dict[str, CveRecord]) -> None:
    cvss = nvd["CVE-2024-7347"].cvss
    assert cvss is not None and cvss.version == "4.0"
    assert cvss.vector.startswith("CVSS:4.0/AV:L/AC:H/AT:P/PR:L")
    assert (cvss.base_score, cvss.severity, cvss.feed_score) == (5.7, "medium", 5.7)


def test_a_v4_vector_is_scored_as_v4_and_only_a_v4_vector() -> None:
    from lewis_tasks.domain.vulns import score_vector
    from lewis_tasks.errors import InvalidInput

    vector = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"
    assert score_vector(vector) == (9.3, "critical")
    with pytest.raises(InvalidInput):  # a v2 vector declared 4.0 is not read as v2
        score_vector("AV:N/AC:L/Au:N/C:P/I:P/A:P", "4.0")


def test_records_without_v4_keep_their_v3_1(nvd: dict[str, CveRecord]) -> None:
    cvss = nvd["CVE-2019-12815"].cvss
    assert cvss is not None and (cvss.version, cvss.base_score, cvss.severity) == (
        "3.1",
        9.8,
        "critical",
    )


# ---------------------------------------------------------------- distribution revision


@pytest.mark.parametrize(
    "banner, version, revision",
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n", "9.2p1", "Debian-2+deb12u10"),
        (b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n", "8.9p1", "Ubuntu-3ubuntu0.6"),
        (b"SSH-2.0-OpenSSH_9.9\r\n", "9.9", None),
        (b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.62 (Debian)\r\n\r\n", "2.4.62", "Debian"),
    ],
)
def test_a_distribution_revision_is_kept_on_the_service(
    banner: bytes, version: str, revision: str | None
) -> None:
    info = match_answer(22, banner, "banner" if banner.startswith(b"SSH") else "http")
    assert info is not None and info.version == version
    assert info.extra.get("revision") == revision


def test_version_only_matches_say_so_beside_the_revision() -> None:
    info = match_answer(22, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n")
    assert info is not None
    finding = assess("127.0.0.1", info, find_cves(info.product, info.version, sample_records()))
    assert finding.cve_ids == ["CVE-2023-38408", "CVE-2024-6387"]
    assert finding.revision == "Debian-2+deb12u10"
    assert "version only, banner says Debian-2+deb12u10" in finding.title
    assert finding.to_dict()["revision"] == "Debian-2+deb12u10"
    assert all(c["basis"] == "version" for c in finding.to_dict()["cves"])  # type: ignore[index]
