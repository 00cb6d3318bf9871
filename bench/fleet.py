"""Fleet figures (issue 21): `lewis health` latency, and what cutting scans into waves of the
io slots online costs a fast scan. ``python -m bench.fleet [runs]``; prints a Markdown table.

Stack: a private Redis, SQLite, two `lewis worker io` and one `lewis worker cpu`. The scan is
every port of 127.0.0.1 without service identification (as in the Scan suite), planned with
the waves (as shipped) and without them (``planning.SCAN_WAVES = 0``, the old planning),
interleaved.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import (
    ROOT,
    db_url,
    lewis_env,
    lewis_worker_argv,
    median,
    private_redis,
    processes,
    wait_workers,
)


def _lewis_seconds(env: dict[str, str], *args: str) -> tuple[float, int]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lewis_tasks.cli", *args], env=env, cwd=ROOT, capture_output=True
    )
    return time.perf_counter() - began, done.returncode


def _scan(waves: bool) -> tuple[float, int]:
    from lewis_tasks.infra import planning
    from lewis_tasks.producer.scan import submit_scan

    saved = planning.SCAN_WAVES
    planning.SCAN_WAVES = saved if waves else 0
    try:
        began = time.perf_counter()
        report = submit_scan("127.0.0.1", ports="-", services=False).wait(
            timeout=300, interval=0.01
        )
        return time.perf_counter() - began, report.progress.chunks_total
    finally:
        planning.SCAN_WAVES = saved


def run(runs: int) -> dict[str, Any]:
    from .scan import _use_stack

    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="lewis-bench-fleet-") as tmp:
        env = lewis_env(db_url(server, 1), Path(tmp))
        subprocess.run(
            [sys.executable, "-m", "lewis_tasks.cli", "db", "upgrade"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        app = _use_stack(env)
        argvs = [lewis_worker_argv("io"), lewis_worker_argv("io"), lewis_worker_argv("cpu")]
        with processes(argvs, env, "fleet"):
            wait_workers(app, len(argvs))
            time.sleep(3)  # presence records written
            _scan(True)  # warm-up
            health = [_lewis_seconds(env, "health", "--queue", "io") for _ in range(10)]
            cluster = [_lewis_seconds(env, "health") for _ in range(10)]
            scans: dict[str, list[tuple[float, int]]] = {"waves": [], "old": []}
            for _ in range(runs):
                scans["waves"].append(_scan(True))
                scans["old"].append(_scan(False))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = lewis_env(f"redis://127.0.0.1:{closed.getsockname()[1]}/0", Path(tempfile.gettempdir()))
    down = [_lewis_seconds(dead, "health") for _ in range(10)]
    closed.close()
    out.update(
        health=health, cluster=cluster, down=down, scans=scans, load_after=os.getloadavg()[0]
    )
    return out


def render(data: dict[str, Any]) -> str:
    def secs(rows: list[tuple[float, int]]) -> str:
        return f"{median([r[0] for r in rows]):.3f}"

    waves, old = data["scans"]["waves"], data["scans"]["old"]
    lines = [
        f"load average {data['load_before']:.2f} before, {data['load_after']:.2f} after; "
        f"medians of {len(waves)} interleaved scan runs and 10 health calls",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| `lewis health --queue io` wall (s), process start to exit, code "
        f"{data['health'][0][1]} | {secs(data['health'])} |",
        f"| `lewis health` (whole cluster: io and cpu up, no control, no beat), code "
        f"{data['cluster'][0][1]} | {secs(data['cluster'])} |",
        f"| `lewis health`, broker port closed, code {data['down'][0][1]} | {secs(data['down'])} |",
        f"| full `-p -` of 127.0.0.1, 2 io workers, waves (as shipped): wall (s), chunks "
        f"{waves[0][1]} | {secs(waves)} |",
        f"| the same, old planning: wall (s), chunks {old[0][1]} | {secs(old)} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
