"""One report model: hosts and findings rank by address numerically, for the merge and the reader."""

from __future__ import annotations

from lewis_tasks.domain.findings import assess
from lewis_tasks.domain.scanjob import OpenPort
from lewis_tasks.domain.scanreport import ChunkResult, build_report, finding_entry
from lewis_tasks.domain.services import ServiceInfo

HOSTS = ["10.0.0.10", "example.test", "::1", "10.0.0.9", "9.0.0.1"]
IN_ORDER = ["9.0.0.1", "10.0.0.9", "10.0.0.10", "::1", "example.test"]


def _port(address: str, port: int = 8080) -> OpenPort:
    return OpenPort(address, ServiceInfo(port, "http-alt", probe="banner"))


def test_hosts_and_equal_findings_sort_by_address_numerically() -> None:
    # Given equally severe findings on hosts whose string order is not their address order
    ports = [_port(a) for a in HOSTS]
    findings = [assess(p.address, p.service) for p in ports]
    chunks = [ChunkResult(a, filtered=1, closed=2) for a in HOSTS]
    # When the report is built
    body = build_report(chunks, ports, findings, planned=[(a, None) for a in HOSTS])
    # Then IPv4 numerically, IPv6 after, names last — hosts and findings alike
    assert [h.address for h in body.hosts] == IN_ORDER
    assert [f.address for f in body.findings] == IN_ORDER
    assert [finding_entry(f)["host"] for f in body.findings] == IN_ORDER


def test_severity_ranks_before_address_and_the_summary_counts_chunks() -> None:
    redis = OpenPort("10.0.0.10", ServiceInfo(6379, "redis", extra={"auth_required": False}))
    plain = _port("10.0.0.9")
    chunks = [
        ChunkResult("10.0.0.10", 5, 10, (6379,)),
        ChunkResult("10.0.0.9", 1, 2),
        ChunkResult.from_dict(
            {"address": "10.0.0.9", "filtered": 1, "closed": 2, "timed_out": True}
        ),
    ]
    body = build_report(
        chunks, [plain, redis], [assess(p.address, p.service) for p in (plain, redis)]
    )
    assert [f.address for f in body.findings] == ["10.0.0.10", "10.0.0.9"]
    assert [(h.address, h.filtered, h.closed) for h in body.hosts] == [
        ("10.0.0.9", 2, 4),
        ("10.0.0.10", 5, 10),
    ]
    assert body.summary == {
        "hosts": 2,
        "open": 2,
        "filtered": 7,
        "closed": 14,
        "unidentified": 1,
        "timed_out": 1,  # chunks their deadline cut short
        "findings": 2,
        "by_severity": {"critical": 1, "high": 0, "medium": 0, "low": 0, "info": 1},
        "worst": "critical",
    }


def test_a_stored_finding_reads_back_as_it_was() -> None:
    f = assess(
        "10.0.0.9",
        ServiceInfo(6379, "redis", "Redis", "7.0.0", extra={"auth_required": False}),
        hostname="db",
    )
    assert type(f).from_dict(f.to_dict()) == f


def test_the_progress_bar_does_not_reach_100_while_services_are_identified() -> None:
    from lewis_tasks.domain.scanreport import ScanProgress

    # Given every port of a one-chunk scan tried, its services still being identified
    tried = ScanProgress(
        "s",
        "running",
        chunks_total=1,
        chunks_done=0,
        ports_total=1000,
        ports_done=1000,
        open_count=12,
    )
    # Then the bar is short of full and says what it waits for
    assert tried.fraction == 0.9 and tried.phase == "identifying"
    # until the chunk is stored
    done = ScanProgress("s", "done", 1, 1, 1000, 1000, 12)
    assert done.fraction == 1.0 and done.phase == "done"
    # halfway through the connects, it says so; an empty scan is complete
    half = ScanProgress("s", "running", 2, 0, 1000, 500, 0)
    assert half.fraction == 0.45 and half.phase == "connecting"
    assert ScanProgress("s", "done", 0, 0, 0, 0, 0).fraction == 1.0
    assert tried.to_dict()["phase"] == "identifying"
