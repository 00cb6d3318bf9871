"""CVE matching at its edges: exclusive range starts, word-by-word versions, feed corner cases.

Written against the survivors of a mutation run (``scripts/mutation vulns``): each test pins a
bound, a default or a message that a one-token change of the code would move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.domain.vulns import (
    SEVERITIES,
    CpeRange,
    CveRecord,
    compare_versions,
    find_cves,
    load_feed,
    match,
    parse_cve,
    parse_feed,
    severity_rank,
)
from lewis_tasks.errors import InvalidInput

V31 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8 critical
V31_LOW = "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"  # 1.8 low
V2 = "AV:N/AC:L/Au:N/C:P/I:P/A:P"  # 7.5 high


def cpe(product: str = "openssh", version: str = "*", update: str = "*", part: str = "a") -> str:
    return f"cpe:2.3:{part}:openbsd:{product}:{version}:{update}:*:*:*:*:*"


def cve(
    cve_id: str = "CVE-2099-0001", *, matches: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": cve_id, "descriptions": [{"lang": "en", "value": "a flaw"}]}
    if matches is not None:
        body["configurations"] = [{"nodes": [{"operator": "OR", "cpeMatch": matches}]}]
    body.update(extra)
    return body


def one_range(**fields: Any) -> CpeRange:
    [rng] = parse_cve(cve(matches=[{"vulnerable": True, "criteria": cpe(), **fields}])).ranges
    return rng


# ---------------------------------------------------------------- ranges


def test_version_start_excluding_leaves_out_the_start_itself() -> None:
    rng = one_range(versionStartExcluding="8.5", versionEndIncluding="9.1")
    assert rng.start_excluding == "8.5" and rng.start_including is None
    assert [v for v in ("8.4", "8.5", "8.5p1", "8.6", "9.1", "9.1p1") if rng.matches(v)] == [
        "8.5p1",
        "8.6",
        "9.1",
    ]


def test_start_excluding_alone_holds_everything_after() -> None:
    rng = CpeRange("CVE-2099-0002", "openbsd", "openssh", start_excluding="2.0")
    assert (rng.matches("1.9"), rng.matches("2.0"), rng.matches("2.0.1"), rng.matches("31")) == (
        False,
        False,
        True,
        True,
    )
    assert match("openbsd:openssh", "2.1", [rng]) == ["CVE-2099-0002"]
    assert match("openbsd:openssh", "2.0", [rng]) == []


def test_a_non_vulnerable_range_matches_nothing_even_inside_its_bounds() -> None:
    rng = CpeRange("CVE-2099-0003", "openbsd", "openssh", start_including="1.0", vulnerable=False)
    assert not rng.matches("1.5") and not rng.matches("1.0")


def test_a_match_without_a_vulnerable_flag_counts_as_vulnerable() -> None:
    [rng] = parse_cve(cve(matches=[{"criteria": cpe(version="7.4")}])).ranges
    assert rng.vulnerable is True and rng.matches("7.4") and not rng.matches("7.5")


@pytest.mark.parametrize("update", ["p1", "sp2", "XX-XX"])
def test_an_exact_update_is_part_of_the_version(update: str) -> None:
    rng = CpeRange("CVE-2099-0004", "openbsd", "openssh", version="1.0", update=update)
    assert rng.matches(f"1.0{update}")
    assert not rng.matches("1.0")


def test_a_version_without_a_number_matches_no_exact_release() -> None:
    rng = CpeRange("CVE-2099-0005", "openbsd", "openssh", version="8.9")
    assert rng.matches("8.9p1") and not rng.matches("beta") and not rng.matches("p1")


# ---------------------------------------------------------------- version words


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("2.0beta", "2.0rc", -1),  # two pre-release words: alphabetical
        ("2.0rc", "2.0beta", 1),
        ("1.0b", "1.0a", 1),
        ("1.0rc1", "1.0p1", -1),  # a pre-release word before a release word
        ("1.0p1", "1.0rc1", 1),
        ("8.9p1", "8.9q1", -1),  # two release words: alphabetical
        ("8.9q1", "8.9p1", 1),
        ("1.0p", "1.0.1", -1),  # a letter release before the next number
        ("1.0.1", "1.0p", 1),
    ],
)
def test_words_compare_pre_releases_first_then_alphabetically(
    a: str, b: str, expected: int
) -> None:
    assert compare_versions(a, b) == expected


# ---------------------------------------------------------------- CVSS picking


def metric(
    vector: str, *, kind: str = "Primary", version: str | None = "3.1", score: float | None = 9.8
) -> dict[str, Any]:
    data: dict[str, Any] = {"vectorString": vector}
    if version is not None:
        data["version"] = version
    if score is not None:
        data["baseScore"] = score
    return {"type": kind, "cvssData": data}


def test_the_primary_metric_wins_wherever_it_sits() -> None:
    rec = parse_cve(
        cve(metrics={"cvssMetricV31": [metric(V31_LOW, kind="Secondary", score=1.8), metric(V31)]})
    )
    assert rec.cvss is not None and (rec.cvss.vector, rec.severity) == (V31, "critical")


def test_a_metric_list_without_a_vector_falls_through_to_the_next() -> None:
    rec = parse_cve(
        cve(
            metrics={
                "cvssMetricV31": [{"type": "Primary", "cvssData": {}}],
                "cvssMetricV2": [metric(V2, version="2.0", score=7.5)],
            }
        )
    )
    assert rec.cvss is not None
    assert (rec.cvss.version, rec.score, rec.severity) == ("2.0", 7.5, "high")


def test_a_metric_without_its_own_version_takes_its_lists_and_may_lack_a_score() -> None:
    rec = parse_cve(cve(metrics={"cvssMetricV30": [metric(V31, version=None, score=None)]}))
    assert rec.cvss is not None
    assert (rec.cvss.version, rec.cvss.feed_score, rec.score) == ("3.0", None, 9.8)


def test_the_declared_version_decides_the_parser() -> None:
    # A v2 vector declared 3.1 is a malformed v3 metric, never quietly scored as v2.
    with pytest.raises(InvalidInput) as err:
        parse_cve(
            cve("CVE-2099-0010", metrics={"cvssMetricV2": [metric(V2, version="3.1")]}),
            source="nvd-2099.json",
        )
    message = str(err.value)
    assert message.startswith(f"nvd-2099.json: CVE-2099-0010: CVSS vector {V2!r}: ")
    assert "CVSS3" in message  # the cvss package's own words follow


# ---------------------------------------------------------------- feeds


def test_descriptions_default_to_empty_without_english() -> None:
    assert parse_cve(cve(descriptions=[{"lang": "es", "value": "un fallo"}])).description == ""
    assert parse_cve(cve(descriptions=[{"lang": "en"}])).description == ""


def test_only_and_configurations_of_several_nodes_carry_platforms() -> None:
    nodes = [
        {"cpeMatch": [{"vulnerable": True, "criteria": cpe(version="6.0")}]},
        {"cpeMatch": [{"vulnerable": False, "criteria": cpe("debian_linux", part="o")}]},
    ]
    or_rec = parse_cve(cve(configurations=[{"operator": "OR", "nodes": nodes}]))
    and_rec = parse_cve(cve(configurations=[{"operator": "AND", "nodes": nodes}]))
    assert [r.platforms for r in or_rec.ranges] == [()]
    assert [r.platforms for r in and_rec.ranges] == [(cpe("debian_linux", part="o"),)]


@pytest.mark.parametrize("criteria", ["cpe:2.3:a:openbsd:openssh", "cpe:2.2:a:x:y:1:*:*"])
def test_a_short_or_foreign_cpe_is_refused_naming_it(criteria: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_cve(cve("CVE-2099-0011", matches=[{"criteria": criteria}]), source="f.json")
    assert str(err.value) == f"f.json: CVE-2099-0011: bad CPE {criteria!r}"


def test_seven_cpe_fields_are_enough() -> None:
    [rng] = parse_cve(cve(matches=[{"criteria": "cpe:2.3:a:openbsd:openssh:9.3:p2"}])).ranges
    assert (rng.key, rng.version, rng.update) == ("openbsd:openssh", "9.3", "p2")


def test_errors_name_the_default_source() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_cve(cve("CVE-2099-0012", matches=[{"criteria": "nope"}]))
    assert str(err.value) == "feed: CVE-2099-0012: bad CPE 'nope'"
    with pytest.raises(InvalidInput) as err:
        parse_feed({"vulnerabilities": ["not a record"]})
    assert str(err.value) == "feed: vulnerabilities[0] has no cve.id"


def test_a_malformed_file_is_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "nvd-broken.json"
    path.write_text(json.dumps({"vulnerabilities": [{"cve": {"id": 7}}]}))
    with pytest.raises(InvalidInput) as err:
        load_feed(path)
    assert str(err.value) == f"{path}: vulnerabilities[0] has no cve.id"


def test_a_record_without_cvss_or_description_round_trips() -> None:
    rec = CveRecord("CVE-2099-0013", "", None, ())
    wire = json.loads(json.dumps(rec.to_dict()))
    assert wire["cvss"] is None
    assert CveRecord.from_dict(wire) == rec
    assert CveRecord.from_dict({"cve_id": "CVE-2099-0013"}) == rec
    assert (rec.severity, rec.score) == ("none", 0.0)


# ---------------------------------------------------------------- matching helpers


def test_find_cves_needs_both_a_known_product_and_a_version() -> None:
    records = [parse_cve(cve(matches=[{"criteria": cpe(version="7.4")}]))]
    assert [r.cve_id for r in find_cves(" OpenSSH ", "7.4", records)] == ["CVE-2099-0001"]
    assert find_cves("OpenSSH", "", records) == []
    assert find_cves(None, "7.4", records) == []


@pytest.mark.parametrize(
    "word, rank",
    [("none", 0), ("low", 1), ("medium", 2), ("high", 3), ("critical", 4), ("severe", 0), ("", 0)],
)
def test_severity_rank_orders_the_bands(word: str, rank: int) -> None:
    assert severity_rank(word) == rank
    assert sorted(SEVERITIES, key=severity_rank) == list(SEVERITIES)
