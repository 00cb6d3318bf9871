"""Cores a worker may use: the affinity, capped by a container's CPU quota (issue 17, item 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lewis_tasks.domain import cores
from lewis_tasks.domain.cores import cpu_quota, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "cpu_max, quota",
    [
        ("max 100000", None),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("200000 50000", 4.0),
        ("garbage", None),
        ("0 100000", None),
    ],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert cpu_quota(tmp_path) == quota


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    assert cpu_quota(tmp_path) == 2.5


def test_no_cgroup_means_the_affinity(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path) is None
    assert usable_cores(tmp_path) == AFFINITY


def test_a_fractional_quota_rounds_up_and_never_exceeds_the_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{AFFINITY * 100000 + 1} 100000")
    assert usable_cores(tmp_path) == AFFINITY  # the quota exceeds the cores we have


def test_the_cpu_worker_takes_one_child_per_quota_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lewis_tasks.infra.config import load_settings
    from lewis_tasks.infra.profiles import worker_options

    # Given a container limited to half a core, on a host with more
    (tmp_path / "cpu.max").write_text("50000 100000")
    monkeypatch.setattr(cores, "CGROUP", tmp_path)
    # Then the cpu worker starts one child, not one per host core
    opts = worker_options("cpu", load_settings(env={}, cwd=tmp_path))
    assert opts[opts.index("-c") + 1] == "1"
