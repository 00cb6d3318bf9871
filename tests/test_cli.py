"""The `lewis` command line as a user meets it: exit codes, one-line errors, the whole stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from lewis_tasks.infra.redis_server import free_port
from tests.support.procs import ROOT, lewis_env
from tests.support.wait import wait_for


def lewis(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lewis_tasks.cli", *args],
        cwd=env.get("CWD", ROOT),
        env=lewis_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_setting_is_one_line_naming_the_key_and_exit_2(tmp_path: Path) -> None:
    result = lewis(
        "status", env={"LEWIS_NETWORK_MAX_CONNECTIONS": "lots", "LEWIS_STACK_HOME": str(tmp_path)}
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lewis: configuration error: setting network.max_connections: expected an integer, got 'lots'"
    ]


def test_bad_yaml_value_and_unknown_key_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("performance:\n  database:\n    pool_size: -3\n")
    result = lewis("status", env={"LEWIS_CONFIG": str(config), "LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2 and "database.pool_size: must be ≥ 0" in result.stderr
    config.write_text("network:\n  max_conections: 5\n")
    result = lewis("status", env={"LEWIS_CONFIG": str(config), "LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2 and "network.max_conections: unknown key" in result.stderr
    result = lewis("status", env={"LEWIS_CONFIG": str(tmp_path / "missing.yaml")})
    assert result.returncode == 2 and "cannot read it" in result.stderr
    assert "Traceback" not in result.stderr


def test_broker_down_is_reported_quickly_without_traceback(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    began = time.monotonic()
    result = lewis(
        "status", env={"LEWIS_BROKER_URL": dead, "LEWIS_STACK_HOME": str(tmp_path)}, timeout=30
    )
    assert result.returncode == 3
    assert "DOWN" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - began < 25  # "within a few seconds"; generous for a busy machine


def test_worker_without_any_broker_says_how_to_get_one(tmp_path: Path) -> None:
    result = lewis("worker", "io", env={"LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2 and "LEWIS_BROKER_URL" in result.stderr


@pytest.mark.slow
def test_up_detach_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {
        "LEWIS_STACK_HOME": str(tmp_path / "stack"),
        "LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "2",
        "LEWIS_MONITORING_PING_TIMEOUT": "0.5",
        "LEWIS_WORKERS_SHUTDOWN_TIMEOUT": "2",
    }
    up = lewis("up", "--detach", "--timeout", "90", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads((tmp_path / "stack" / "stack.json").read_text())
    assert os.stat(tmp_path / "stack" / "stack.json").st_mode & 0o077 == 0  # holds the password
    pids = [info["supervisor_pid"], *info["processes"].values()]
    try:
        assert "redis://:***@127.0.0.1" in up.stdout  # the password is never printed

        def after_a_heartbeat() -> tuple[Any, dict[str, Any]] | None:
            status = lewis("status", "--json", env=env)
            report = json.loads(status.stdout)
            return (
                (status, report)
                if report.get("heartbeat") and "workers" in report["heartbeat"]
                else None
            )

        # the first heartbeat lands within a couple of intervals
        status, report = wait_for(after_a_heartbeat, 30, interval=0.5, what="a heartbeat in status")
        assert status.returncode == 0
        assert report["broker"]["up"] and "***" in report["broker"]["url"]
        # one io worker per core (up to 4), one cpu worker (its children per core), one control
        io_workers = min(len(os.sched_getaffinity(0)), 4)
        for queue, count in (("io", io_workers), ("cpu", 1), ("control", 1)):
            assert len(report["queues"][queue]["workers"]) == count, report["queues"]
            if queue != "control":  # control: beat jobs come and go on a loaded machine
                assert report["queues"][queue]["ready"] == 0, report["queues"]
        assert report["beat"]["alive"]
        assert report["heartbeat"]["workers"] == io_workers + 2
        text = lewis("status", env=env).stdout
        assert "beat     alive" in text and "heartbeat" in text
    finally:
        down = lewis("down", env=env)
    assert down.returncode == 0 and "stopped" in down.stdout
    everything = set(pids) | {
        c.pid
        for p in pids
        if psutil.pid_exists(p)
        for c in psutil.Process(p).children(recursive=True)
    }
    time.sleep(0.5)
    alive = [
        p
        for p in everything
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], f"left behind: {alive}"
    assert not (tmp_path / "stack" / "stack.json").exists()


@pytest.mark.slow
def test_ctrl_c_on_a_foreground_stack_stops_everything(tmp_path: Path) -> None:
    env = lewis_env(
        {"LEWIS_STACK_HOME": str(tmp_path / "fg"), "LEWIS_WORKERS_SHUTDOWN_TIMEOUT": "2"}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lewis_tasks.cli", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("ready in"):
                break
        assert any(line.startswith("ready in") for line in lines), "".join(lines)
        descendants = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(descendants) >= 6  # redis, 3 workers (+ pool children), beat, flower
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stack stopped" in out
    time.sleep(0.5)
    alive = [
        p
        for p in descendants
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], f"left behind: {alive}"
