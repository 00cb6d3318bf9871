"""NVD JSON 2.0 parsing, CVSS from vectors, version comparison and CPE matching, on real CVEs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lewis_tasks.domain.vulns import (
    CpeRange,
    CveRecord,
    compare_versions,
    cpe_products,
    find_cves,
    load_feed,
    match,
    parse_feed,
    sample_records,
    score_vector,
)
from lewis_tasks.errors import InvalidInput

SAMPLE = Path(__file__).parents[2] / "lewis_tasks" / "domain" / "data" / "nvd-sample.json"


@pytest.fixture(scope="module")
def records() -> dict[str, CveRecord]:
    return {r.cve_id: r for r in sample_records()}


def test_the_sample_feed_holds_the_promised_records(records: dict[str, CveRecord]) -> None:
    assert set(records) == {
        "CVE-2024-6387",
        "CVE-2023-38408",
        "CVE-2022-0543",
        "CVE-2023-28856",
        "CVE-2021-41773",
        "CVE-2011-2523",
        "CVE-2015-3306",
        "CVE-2019-10149",
        "CVE-2016-8704",
        "CVE-2019-11500",
        "CVE-2012-2122",
        "CVE-2023-2454",
    }
    assert load_feed(SAMPLE) == list(sample_records())


def test_a_record_keeps_id_description_cvss_and_ranges(records: dict[str, CveRecord]) -> None:
    rec = records["CVE-2024-6387"]
    assert rec.description.startswith("A security regression (CVE-2006-5051)")
    assert rec.cvss is not None
    assert (rec.cvss.version, rec.cvss.vector) == (
        "3.1",
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H",
    )
    assert (rec.score, rec.severity) == (8.1, "high")
    assert rec.published == "2024-07-01T13:15:06.467"
    ranged = [r for r in rec.ranges if r.start_including]
    assert [(r.start_including, r.end_excluding) for r in ranged] == [("8.6", "9.8")]
    exact = {(r.version, r.update) for r in rec.ranges if r.version != "*"}
    assert exact == {("4.4", "-"), ("8.5", "p1"), ("9.8", "-")}


def test_cvss_falls_back_from_31_to_30_to_2(records: dict[str, CveRecord]) -> None:
    picked = {cid: (r.cvss.version, r.score, r.severity) for cid, r in records.items() if r.cvss}
    assert picked["CVE-2016-8704"] == ("3.0", 9.8, "critical")  # no v3.1 metric at all
    assert picked["CVE-2012-2122"] == ("2.0", 5.1, "medium")  # v2 only
    assert picked["CVE-2019-10149"] == ("3.1", 9.8, "critical")  # NVD's 3.1 over Red Hat's 3.0
    assert picked["CVE-2023-28856"] == ("3.1", 6.5, "medium")  # Primary over Secondary


def test_scores_are_computed_from_the_vectors_and_agree_with_nvd(
    records: dict[str, CveRecord],
) -> None:
    for rec in records.values():
        assert rec.cvss is not None
        assert rec.cvss.base_score == rec.cvss.feed_score, rec.cve_id


@pytest.mark.parametrize(
    "vector, expected",
    [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", (9.8, "critical")),
        ("CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:C/C:H/I:H/A:H", (9.0, "critical")),
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:N/I:N/A:H", (5.5, "medium")),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", (0.0, "none")),
        ("AV:N/AC:M/Au:N/C:P/I:N/A:N", (4.3, "medium")),
        ("AV:N/AC:L/Au:N/C:C/I:C/A:C", (10.0, "high")),  # v2 has no critical band
    ],
)
def test_score_vector(vector: str, expected: tuple[float, str]) -> None:
    assert score_vector(vector) == expected


@pytest.mark.parametrize("vector", ["CVSS:3.1/AV:X/AC:L", "AV:N/AC:Q/Au:N/C:P/I:N/A:N", "nonsense"])
def test_malformed_vectors_are_invalid_input(vector: str) -> None:
    with pytest.raises(InvalidInput, match="CVSS vector"):
        score_vector(vector)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("8.9p1", "8.9", 1),
        ("8.9p1", "9.8", -1),
        ("9.8p1", "9.8", 1),  # the fix for CVE-2024-6387 sorts after the range's end
        ("9.3p1", "9.3p2", -1),
        ("7.0.15", "7.0.11", 1),
        ("7.0.9", "7.0.11", -1),  # numbers compare as numbers
        ("2.4.49", "2.4.49", 0),
        ("2.4.49-rc1", "2.4.49", -1),
        ("2.4.49", "2.4.50-beta", -1),
        ("4.90_1", "4.91", -1),
        ("4.90_1", "4.90", 1),
        ("2.2.36.4", "2.2.36", 1),
        ("1.0a", "1.0.1", -1),
        ("10.0", "9.99", 1),
        ("5.7.33", "5.7.33", 0),
    ],
)
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


@pytest.mark.parametrize(
    "product, version, expected",
    [
        ("OpenSSH", "8.9p1", ["CVE-2023-38408", "CVE-2024-6387"]),
        ("OpenSSH", "8.5p1", ["CVE-2023-38408", "CVE-2024-6387"]),  # the exact 8.5:p1 entry
        ("OpenSSH", "8.5", ["CVE-2023-38408"]),  # 8.5 without p1 is before the 8.6 range start
        ("OpenSSH", "4.3p2", ["CVE-2023-38408", "CVE-2024-6387"]),  # versionEndExcluding 4.4
        ("OpenSSH", "9.3p2", ["CVE-2024-6387"]),
        ("OpenSSH", "9.8p1", []),
        ("OpenSSH", "9.8", ["CVE-2024-6387"]),  # the exact 9.8:- entry
        ("Redis", "6.0.16", ["CVE-2023-28856"]),  # CVE-2022-0543 is redis:- on Debian/Ubuntu only
        ("Redis", "6.2.12", []),
        ("Redis", "7.0.10", ["CVE-2023-28856"]),
        ("Apache httpd", "2.4.49", ["CVE-2021-41773"]),
        ("Apache httpd", "2.4.48", []),
        ("vsftpd", "2.3.4", ["CVE-2011-2523"]),
        ("vsftpd", "3.0.5", []),
        ("ProFTPD", "1.3.5", ["CVE-2015-3306"]),
        ("ProFTPD", "1.3.5e", ["CVE-2015-3306"]),  # a letter release of 1.3.5 (update "*")
        ("ProFTPD", "1.3.6", []),
        ("Exim", "4.87", ["CVE-2019-10149"]),
        ("Exim", "4.91", ["CVE-2019-10149"]),  # versionEndIncluding
        ("Exim", "4.92", []),
        ("memcached", "1.4.31", ["CVE-2016-8704"]),
        ("memcached", "1.6.14", []),
        ("Dovecot pop3d", "2.3.7.1", ["CVE-2019-11500"]),
        ("Dovecot imapd", "2.2.36.4", []),
        ("MySQL", "5.5.21", ["CVE-2012-2122"]),
        ("MySQL", "5.1.52sp1", ["CVE-2012-2122"]),
        ("MySQL", "5.5.24", []),
        ("MariaDB", "5.3.6", ["CVE-2012-2122"]),
        ("PostgreSQL", "14.7", ["CVE-2023-2454"]),
        ("PostgreSQL", "14.8", []),
        ("PostgreSQL", "10.23", []),
    ],
)
def test_find_cves_on_the_sample(product: str, version: str, expected: list[str]) -> None:
    found = find_cves(product, version, sample_records())
    assert sorted(r.cve_id for r in found) == expected
    assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)


def test_unknown_versions_and_products_match_nothing() -> None:
    assert find_cves("OpenSSH", None, sample_records()) == []
    assert find_cves("Redis", "", sample_records()) == []
    assert find_cves("SomeServer", "1.0", sample_records()) == []
    assert cpe_products("OpenSSH") == ("openbsd:openssh",)
    assert cpe_products(None) == ()


def test_match_works_on_raw_ranges(records: dict[str, CveRecord]) -> None:
    ranges = [r for rec in records.values() for r in rec.ranges]
    assert match("exim:exim", "4.90_1", ranges) == ["CVE-2019-10149"]
    assert match("EXIM:EXIM", "4.90_1", ranges) == ["CVE-2019-10149"]
    assert match("exim:exim", "4.90_1", []) == []
    assert match("dovecot:pigeonhole", "0.5.7.1", ranges) == ["CVE-2019-11500"]


def test_and_configurations_carry_their_platforms(records: dict[str, CveRecord]) -> None:
    (redis_range,) = records["CVE-2022-0543"].ranges  # the OS entries are context, not matches
    assert redis_range.version == "-" and redis_range.key == "redis:redis"
    assert "cpe:2.3:o:debian:debian_linux:11.0:*:*:*:*:*:*:*" in redis_range.platforms
    assert all(not r.platforms for r in records["CVE-2023-28856"].ranges)


def test_operating_system_entries_are_not_products(records: dict[str, CveRecord]) -> None:
    keys = {r.key for rec in records.values() for r in rec.ranges}
    assert not any(k.startswith(("debian:", "fedoraproject:", "canonical:")) for k in keys)


def test_negated_and_non_vulnerable_entries_never_match() -> None:
    feed = {
        "vulnerabilities": [
            {
                "cve": {
                    "id": "CVE-0000-0001",
                    "configurations": [
                        {
                            "nodes": [
                                {
                                    "operator": "OR",
                                    "negate": True,
                                    "cpeMatch": [
                                        {
                                            "vulnerable": True,
                                            "criteria": "cpe:2.3:a:x:y:*:*:*:*:*:*:*:*",
                                        }
                                    ],
                                },
                                {
                                    "operator": "OR",
                                    "negate": False,
                                    "cpeMatch": [
                                        {
                                            "vulnerable": False,
                                            "criteria": "cpe:2.3:a:x:z:*:*:*:*:*:*:*:*",
                                        }
                                    ],
                                },
                            ]
                        }
                    ],
                }
            }
        ]
    }
    (rec,) = parse_feed(feed)
    assert rec.ranges == () and rec.cvss is None and rec.severity == "none"
    assert not CpeRange("CVE-0000-0002", "x", "y", vulnerable=False).matches("1.0")


def test_records_round_trip_as_json(records: dict[str, CveRecord]) -> None:
    for rec in records.values():
        assert CveRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


@pytest.mark.parametrize(
    "feed, fragment",
    [
        ("{not json", "not JSON"),
        ("[]", "no 'vulnerabilities' list"),
        ('{"vulnerabilities": {}}', "no 'vulnerabilities' list"),
        ('{"vulnerabilities": [{"cve": {}}]}', "vulnerabilities[0] has no cve.id"),
        (
            '{"vulnerabilities": [{"cve": {"id": "CVE-1", "configurations": [{"nodes": [{"cpeMatch":'
            ' [{"criteria": "cpe:/a:old:format"}]}]}]}}]}',
            "bad CPE",
        ),
        (
            '{"vulnerabilities": [{"cve": {"id": "CVE-2", "metrics": {"cvssMetricV31": [{"cvssData":'
            ' {"version": "3.1", "vectorString": "CVSS:3.1/AV:Q"}}]}}}]}',
            "CVE-2",
        ),
    ],
)
def test_malformed_feeds_are_invalid_input_naming_the_source(feed: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_feed(feed, source="upload.json")
    assert "upload.json" in str(err.value) and fragment in str(err.value)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="missing.json"):
        load_feed(tmp_path / "missing.json")
