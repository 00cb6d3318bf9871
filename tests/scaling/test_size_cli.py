"""`lewis size` from stored benchmark runs: per-process rates, the derivation, --json."""

from __future__ import annotations

import json
from pathlib import Path

from lewis_tasks.domain.sizing import costs_from_runs
from tests.test_cli import lewis


def run(name: str, queue: str, rate: float, consumers: int, when: str) -> dict[str, object]:
    return {
        "id": f"{name}-{queue}-{when}",
        "created_at": when,
        "suite": "cluster",
        "name": name,
        "queue": queue,
        "metrics": {"throughput_per_s": rate},
        "settings": {"run": {"consumers": {queue: consumers}}},
    }


RUNS = [
    run("scan", "io", 40_000, 2, "2026-12-01"),
    run("http", "io", 900, 1, "2026-12-01"),
    run("noop", "io", 1500, 1, "2026-12-01"),
    run("noop", "cpu", 400, 1, "2026-12-01"),
    run("scan", "io", 30_000, 3, "2026-12-02"),
]


def test_costs_are_per_process_from_the_newest_run() -> None:
    costs = costs_from_runs(RUNS)
    assert costs.scan_ports_per_s == 10_000  # the newest: 30,000 on 3 io workers
    assert (costs.http_requests_per_s, costs.io_tasks_per_s, costs.cpu_tasks_per_s) == (
        900,
        1500,
        400,
    )
    assert "3 io worker(s)" in costs.sources["scan_ports_per_s"]


def test_size_prints_its_derivation_and_json(tmp_path: Path) -> None:
    env = {"LEWIS_STACK_HOME": str(tmp_path)}
    assert lewis("db", "upgrade", env=env).returncode == 0
    done = lewis("size", "--scans-per-hour", "10", env=env)
    assert done.returncode == 1 and "run `lewis bench run` first" in done.stderr, done.stderr
    script = (
        "from lewis_tasks.report.runs import record_benchmark_run as r\n"
        + "".join(
            f"r({x['id']!r}, suite='cluster', name={x['name']!r}, "
            f"queue={x['queue']!r}, metrics={x['metrics']!r}, "
            f"consumers={x['settings']['run']['consumers']!r})\n"  # type: ignore[index]
            for x in RUNS[:4]
        )
    )
    import subprocess
    import sys

    from tests.support.procs import ROOT, lewis_env

    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=lewis_env(env), check=True)
    done = lewis(
        "size",
        "--scans-per-hour",
        "1000",
        "--ports-per-scan",
        "65535",
        "--retention-days",
        "90",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # 65.5 M ports/h at 20,000 ports/s per process (40,000 on 2) -> 0.9 busy -> 2 io workers
    assert out["workers"] == {"io": 2, "cpu": 1, "control": 1}
    assert any("20,000.0/s per process" in line for line in out["derivation"])
    text = lewis("size", "--scans-per-hour", "1000", "--ports-per-scan", "65535", env=env).stdout
    assert text.startswith("cores 5,") and "io workers: max(steady" in text
