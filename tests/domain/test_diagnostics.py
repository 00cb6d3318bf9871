"""Diagnostics: real psutil figures for this process, advice on synthetic snapshots, cluster roll-up."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from lewis_tasks.domain.diagnostics import (
    ProcessUsage,
    SpaceUsage,
    SystemSnapshot,
    WorkerDiagnosis,
    aggregate,
    collect_system,
    diagnose_worker,
    queue_wait_findings,
    recommend,
)
from lewis_tasks.errors import InvalidInput

GiB = 1 << 30


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A real child process of this one, standing in for a pool child."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _healthy(**changes: object) -> SystemSnapshot:
    """A calm host: 2 cores, 30 % cpu, half the memory, a fifth of the disk, two children."""
    base = SystemSnapshot(
        taken_at=1_700_000_000.0,
        hostname="w1",
        cpu_count=2,
        cpu_percent=30.0,
        per_core=(25.0, 35.0),
        load_average=(0.8, 0.7, 0.6),
        memory=SpaceUsage(16 * GiB, 8 * GiB, 8 * GiB, 50.0),
        swap=SpaceUsage(0, 0, 0, 0.0),
        disk_path="/",
        disk=SpaceUsage(100 * GiB, 20 * GiB, 80 * GiB, 20.0),
        processes=(
            ProcessUsage(100, "parent", 80 << 20, 1.0, 20, 3, 4),
            ProcessUsage(101, "child", 300 << 20, 20.0, 12, 1, 1),
            ProcessUsage(102, "child", 500 << 20, 10.0, 12, 1, 1),
        ),
        fd_limit=1024,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _codes(findings: list) -> dict[str, str]:
    return {f.code: f.severity for f in findings}


def test_snapshot_of_this_process_and_its_child(child: subprocess.Popen[bytes]) -> None:
    snap = collect_system(interval=0.1)

    assert 0.0 <= snap.cpu_percent <= 100.0
    assert len(snap.per_core) == psutil.cpu_count() == snap.cpu_count
    assert snap.memory.total_bytes > 0 and 0 <= snap.memory.percent <= 100
    assert snap.disk_path == "/" and snap.disk.total_bytes >= snap.disk.used_bytes > 0
    parent = snap.processes[0]
    assert (parent.pid, parent.role) == (os.getpid(), "parent")
    assert parent.rss_bytes > 1 << 20 and parent.num_fds and parent.num_fds > 0
    assert child.pid in {p.pid for p in snap.children}
    assert snap.pool_rss_bytes == sum(p.rss_bytes for p in snap.processes)
    assert snap.load_average is not None and len(snap.load_average) == 3
    assert snap.fd_limit is None or snap.fd_limit >= parent.num_fds


def test_snapshot_of_another_tree_by_its_parent_pid(child: subprocess.Popen[bytes]) -> None:
    snap = collect_system(pool_pid=child.pid, interval=0.05)
    assert [p.pid for p in snap.processes] == [child.pid]
    assert snap.children == ()


def test_snapshot_round_trips_through_json() -> None:
    snap = collect_system(interval=0.05)
    again = SystemSnapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    assert again == snap
    assert "pid" in snap.format_table() and snap.hostname in snap.format_table()


def test_snapshot_request_checks() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(InvalidInput, match=f"pool_pid {gone.pid}"):
        collect_system(pool_pid=gone.pid, interval=0.05)
    with pytest.raises(InvalidInput, match="interval"):
        collect_system(interval=0)
    with pytest.raises(InvalidInput, match="interval"):
        collect_system(interval=60)
    with pytest.raises(InvalidInput, match="disk_path"):
        collect_system(disk_path="/no/such/dir", interval=0.05)
    with pytest.raises(InvalidInput, match="not a system snapshot"):
        SystemSnapshot.from_dict({"hostname": "x"})


def test_a_calm_host_gets_no_advice() -> None:
    assert (
        recommend(
            _healthy(),
            recycle_limit_bytes=2 * GiB,
            pool_size=4,
            pool_busy=1,
            queue_wait_trend={"io": [0.2, 0.1, 0.3, 0.2]},
        )
        == []
    )


@pytest.mark.parametrize(
    ("changes", "code", "severity"),
    [
        ({"cpu_percent": 80.0}, "cpu_high", None),  # at the threshold: not past it
        ({"cpu_percent": 81.0}, "cpu_high", "warning"),
        ({"cpu_percent": 95.0}, "cpu_high", "critical"),
        ({"memory": SpaceUsage(16 * GiB, 14 * GiB, 2 * GiB, 84.9)}, "memory_high", None),
        ({"memory": SpaceUsage(16 * GiB, 14 * GiB, 2 * GiB, 86.0)}, "memory_high", "warning"),
        ({"memory": SpaceUsage(16 * GiB, 15 * GiB, 1 * GiB, 96.0)}, "memory_high", "critical"),
        ({"disk": SpaceUsage(100 * GiB, 89 * GiB, 11 * GiB, 89.0)}, "disk_high", None),
        ({"disk": SpaceUsage(100 * GiB, 91 * GiB, 9 * GiB, 91.0)}, "disk_high", "warning"),
        ({"disk": SpaceUsage(100 * GiB, 98 * GiB, 2 * GiB, 98.0)}, "disk_high", "critical"),
        ({"load_average": (3.0, 1.0, 1.0)}, "load_high", None),  # 1.5 per core
        ({"load_average": (4.0, 1.0, 1.0)}, "load_high", "warning"),
        ({"load_average": (7.0, 1.0, 1.0)}, "load_high", "critical"),
    ],
)
def test_host_thresholds_fire_past_the_line_only(
    changes: dict, code: str, severity: str | None
) -> None:
    found = _codes(recommend(_healthy(**changes)))
    assert found.get(code) == severity
    assert set(found) <= {code}


def test_descriptors_near_the_limit() -> None:
    busy = _healthy(processes=(ProcessUsage(100, "parent", 80 << 20, 1.0, 900, 3, 4),))
    assert _codes(recommend(busy)) == {"fds_near_limit": "warning"}
    full = _healthy(processes=(ProcessUsage(100, "parent", 80 << 20, 1.0, 1000, 3, 4),))
    [finding] = recommend(full)
    assert finding.severity == "critical" and "ulimit -n" in finding.message


def test_children_near_the_recycle_limit() -> None:
    near = _healthy(
        processes=(
            ProcessUsage(100, "parent", 3 * GiB, 1.0, 20, 3, 4),  # parent: not recycled
            ProcessUsage(101, "child", int(1.7 * GiB), 50.0, 12, 1, 1),
            ProcessUsage(102, "child", 300 << 20, 10.0, 12, 1, 1),
        )
    )
    [finding] = recommend(near, recycle_limit_bytes=2 * GiB)
    assert (finding.code, finding.severity, finding.subject) == (
        "recycle_limit_near",
        "warning",
        "pid 101",
    )
    assert "1 of 2 pool children" in finding.message
    over = dataclasses.replace(
        near,
        processes=near.processes[:2]
        + (ProcessUsage(103, "child", int(2.2 * GiB), 50.0, 12, 1, 1),),
    )
    [finding] = recommend(over, recycle_limit_bytes=2 * GiB)
    assert finding.severity == "critical" and finding.subject == "pid 103"
    assert recommend(near) == []  # no limit configured: nothing to be near


@pytest.mark.parametrize(
    ("waits", "severity"),
    [
        ([0.5, 1.0, 2.0, 4.0], "warning"),
        ([1.0, 5.0, 12.0], "critical"),
        ([3.0, 3.1, 2.9, 3.0], None),  # steady
        ([8.0, 4.0, 2.0, 1.0], None),  # draining
        ([0.01, 0.02, 0.04, 0.08], None),  # growing, but nobody waits long
        ([1.0, 4.0], None),  # too few samples to call it a trend
        ([1.0, 1.0, 1.0, 1.0, 1.0, 9.0, 1.0, 1.0], None),  # one blip is not a trend
    ],
)
def test_queue_wait_growth(waits: list[float], severity: str | None) -> None:
    found = queue_wait_findings({"cpu": waits})
    assert (found[0].severity if found else None) == severity
    if found:
        assert found[0].subject == "cpu" and "'cpu'" in found[0].message


def test_pool_saturation_and_ordering_worst_first() -> None:
    snap = _healthy(cpu_percent=85.0, disk=SpaceUsage(100 * GiB, 98 * GiB, 2 * GiB, 98.0))
    findings = recommend(snap, pool_size=4, pool_busy=4)
    assert [f.code for f in findings] == ["disk_high", "cpu_high", "pool_saturated"]
    assert [f.severity for f in findings] == ["critical", "warning", "info"]
    assert all(f.message.endswith(".") or f.message.endswith(")") for f in findings)


def test_cluster_report_worst_first_with_missing_workers() -> None:
    calm = diagnose_worker("celery@calm", _healthy(hostname="h1"), pool_size=2, pool_busy=0)
    hot = diagnose_worker(
        "celery@hot", _healthy(hostname="h2", cpu_percent=97.0), pool_size=2, pool_busy=2
    )
    warm = diagnose_worker("celery@warm", _healthy(hostname="h2", cpu_percent=85.0))

    report = aggregate(
        {
            "celery@calm": calm,
            "celery@warm": warm.to_dict(),  # dicts, as broadcast
            "celery@hot": json.loads(json.dumps(hot.to_dict())),
            "celery@gone": None,
        },
        queue_wait_trend={"io": [1.0, 2.0, 4.0]},
    )

    assert [w.worker for w in report.workers] == ["celery@hot", "celery@warm", "celery@calm"]
    assert [w.severity for w in report.workers] == ["critical", "warning", "ok"]
    assert report.missing == ("celery@gone",)
    assert report.totals["workers"] == 4 and report.totals["replied"] == 3
    assert report.totals["hosts"] == 2 and report.totals["max_cpu_percent"] == 97.0
    assert report.totals["pool_rss_bytes"] == 3 * calm.snapshot.pool_rss_bytes
    assert (report.totals["critical"], report.totals["warning"], report.totals["info"]) == (1, 2, 1)
    assert [f.code for f in report.cluster_findings] == ["queue_wait_growing"]
    text = report.format_table()
    assert "NO REPLY: celery@gone" in text and text.index("celery@hot") < text.index("celery@calm")
    assert json.loads(json.dumps(report.to_dict()))["workers"][0]["worker"] == "celery@hot"


def test_cluster_report_refuses_a_malformed_reply() -> None:
    with pytest.raises(InvalidInput, match="not a worker diagnosis"):
        aggregate({"celery@odd": {"worker": "celery@odd"}})


def test_worker_diagnosis_round_trips() -> None:
    diag = diagnose_worker("celery@w", _healthy(cpu_percent=99.0), recycle_limit_bytes=GiB)
    assert WorkerDiagnosis.from_dict(json.loads(json.dumps(diag.to_dict()))) == diag
