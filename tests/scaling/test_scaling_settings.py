"""scaling.* settings: defaults, the LEWIS_SCALING_<KEY> form, and a bad value = exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.config import load_settings
from tests.test_cli import lewis


def test_defaults_and_environment(tmp_path: Path) -> None:
    s = load_settings(env={}, cwd=tmp_path).scaling
    assert (s.interval, s.actuator, s.stabilization_window) == (15.0, "auto", 300.0)
    s = load_settings(
        env={
            "LEWIS_SCALING_IO_MAX_WORKERS": "3",
            "LEWIS_SCALING_ACTUATOR": "local",
            "LEWIS_SCALING_STABILIZATION_WINDOW": "5",
            "LEWIS_SCALING_KUBERNETES_NAMESPACE": "ops",
        },
        cwd=tmp_path,
    ).scaling
    assert (s.io_max_workers, s.actuator, s.stabilization_window, s.kubernetes_namespace) == (
        3,
        "local",
        5.0,
        "ops",
    )


def test_io_workers_default_to_one_per_core_within_the_maximum(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    s = load_settings(env={}, cwd=tmp_path).scaling
    assert (s.io_min_workers, s.io_max_workers) == (min(cores, max(4, cores)), max(4, cores))
    # a maximum below the core count caps the derived minimum instead of refusing it
    s = load_settings(env={"LEWIS_SCALING_IO_MAX_WORKERS": "1"}, cwd=tmp_path).scaling
    assert (s.io_min_workers, s.io_max_workers) == (1, 1)
    # given, it is what was given (0: the io pool may sleep at zero)
    s = load_settings(env={"LEWIS_SCALING_IO_MIN_WORKERS": "0"}, cwd=tmp_path).scaling
    assert s.io_min_workers == 0


def test_min_above_max_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scaling.cpu_min_workers: must not exceed"):
        load_settings(env={"LEWIS_SCALING_CPU_MIN_WORKERS": "5"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"LEWIS_SCALING_ACTUATOR": "magic"},
            "setting scaling.actuator: must be one of auto, dryrun, local, celery, kubernetes, "
            "got 'magic'",
        ),
        ({"LEWIS_SCALING_INTERVAL": "0.5"}, "setting scaling.interval: must be ≥ 1.0, got '0.5'"),
        (
            {"LEWIS_SCALING_IO_TARGET_PER_WORKER": "many"},
            "setting scaling.io_target_per_worker: expected a number, got 'many'",
        ),
        (
            {"LEWIS_SCALING_IO_MIN_WORKERS": "4", "LEWIS_SCALING_IO_MAX_WORKERS": "2"},
            "setting scaling.io_min_workers: must not exceed scaling.io_max_workers (4 > 2)",
        ),
    ],
)
def test_bad_value_is_one_line_exit_2(tmp_path: Path, env: dict[str, str], line: str) -> None:
    result = lewis("scale", "status", env={**env, "LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"lewis: configuration error: {line}"]
