"""Sizing from measured costs: each figure follows from the inputs by the printed derivation."""

from __future__ import annotations

import pytest

from lewis_tasks.domain.sizing import Costs, Workload, size

COSTS = Costs(
    scan_ports_per_s=10_000,
    http_requests_per_s=500,
    io_tasks_per_s=1000,
    cpu_tasks_per_s=200,
    process_rss_bytes=100e6,
)


def test_a_small_workload_needs_the_floor() -> None:
    s = size(Workload(scans_per_hour=10, concurrent_users=1, retention_days=30), COSTS)
    assert s.workers == {"io": 1, "cpu": 1, "control": 1}
    assert s.cores == 4 and s.memory_gb == 0.8
    assert any(line.startswith("io: 10,000 ports/h") for line in s.derivation)


def test_io_workers_follow_the_measured_rate_and_the_peak() -> None:
    # 1,000 scans/h of 65,535 ports: 65.5 M ports/h at 10 k/s = 6,553 s/h -> 2.6 at 70 %
    heavy = Workload(
        scans_per_hour=1000, concurrent_users=1, retention_days=1, ports_per_scan=65_535
    )
    assert size(heavy, COSTS).workers["io"] == 3
    # the same at half the measured rate needs about twice the workers
    slow = Costs(5_000, 500, 1000, 200)
    assert size(heavy, slow).workers["io"] == 6
    # 50 users starting 65k-port scans at once, each due within 60 s: 50*65535/10k/60 = 5.5
    peak = Workload(scans_per_hour=1, concurrent_users=50, retention_days=1, ports_per_scan=65_535)
    assert size(peak, COSTS).workers["io"] == 6
    # network intensive doubles the io pool (the guide's factor)
    assert size(Workload(1, 50, 1, True, 65_535), COSTS).workers["io"] == 11


def test_storage_grows_with_retention_and_the_mix() -> None:
    a = size(Workload(100, 1, 30), COSTS).storage_gb
    b = size(Workload(100, 1, 60), COSTS).storage_gb
    c = size(Workload(100, 1, 30, http_requests_per_hour=10_000), COSTS).storage_gb
    assert b == pytest.approx(2 * a, rel=0.02) and c > a
    # 100 scans/h x (2048 + 1000*0.01*200 B) x 24 x 30 x 1.5
    assert a == pytest.approx(100 * 4048 * 24 * 30 * 1.5 / 1e9, abs=0.01)


def test_missing_costs_are_refused() -> None:
    with pytest.raises(ValueError, match="scan_ports_per_s.*lewis bench run"):
        size(Workload(1, 1, 1), Costs(0, 1, 1, 1))
