"""The bench's peers (huey, dramatiq, taskiq) without their packages: the suite runs without
them (CI never installs them), says so in one line, and the report sets the best peer beside
every platform row when they were measured."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.peers import LAYOUT, PEERS, REQUIREMENTS
from bench.report import render_platform
from bench.run import main

ROOT = Path(__file__).resolve().parents[1]


def _without(package: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ``package`` cannot be imported (a None entry
    in sys.modules makes Python's import raise ImportError, installed or not)."""
    prelude = f"import sys; sys.modules[{package!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize("peer", PEERS)
def test_a_missing_peer_is_left_out_with_one_line_naming_the_requirements(peer: str) -> None:
    # Given the peer's package cannot be imported
    package = LAYOUT[peer][0]
    # When the platform suite loads the peers
    done = _without(
        package, f"from bench.peers import load\nprint(len(load(({peer!r},), None, None)))"
    )
    # Then it runs without that peer and says so in one line naming the file to install
    lines = done.stdout.splitlines()
    assert lines[-1] == "0"
    assert len(lines) == 2
    assert lines[0].startswith(f"bench: peer {peer} skipped: {package} is not installed")
    assert "bench/requirements-peers.txt" in lines[0]


def test_peers_are_pinned_and_stay_out_of_the_project_extras() -> None:
    pins = [
        line
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {p.split("==")[0].split("[")[0] for p in pins} == {
        "huey",
        "dramatiq",
        "taskiq",
        "taskiq-redis",
    }
    assert all("==" in p for p in pins)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    assert not [
        d
        for d in declared
        if d.split("[")[0].split(">")[0].split("=")[0].strip()
        in {"huey", "dramatiq", "taskiq", "taskiq-redis"}
    ]


@pytest.mark.parametrize(
    "argv", [["platform", "--peers", "celery2"], ["platform", "--peers-only"], ["scan", "--quick"]]
)
def test_run_refuses_what_it_cannot_do(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def _platform(peers: dict[str, dict[str, float]]) -> dict:
    """A platform result with one sample per system: LEWIS and Celery fixed, peers as given
    (per peer: bench -> the one figure that bench reports)."""
    keys = {
        "latency": "p50_ms",
        "drain_io": "tasks_per_s",
        "enqueue": "tasks_per_s",
        "enqueue_batched": "tasks_per_s",
        "io_wait": "seconds",
    }
    r: dict[str, dict[str, list[dict[str, float]]]] = {
        "latency": {
            "lewis": [{"p50_ms": 1.5, "p99_ms": 3.0}],
            "baseline": [{"p50_ms": 3.0, "p99_ms": 6.0}],
        },
        "drain_io": {"lewis": [{"tasks_per_s": 1000.0}], "baseline": [{"tasks_per_s": 800.0}]},
        "drain_cpu": {"lewis": [{"tasks_per_s": 700.0}], "baseline": [{"tasks_per_s": 700.0}]},
        "enqueue": {"lewis": [{"tasks_per_s": 3000.0}], "baseline": [{"tasks_per_s": 1500.0}]},
        "enqueue_batched": {"lewis": [{"tasks_per_s": 20000.0}]},
        "io_wait": {"lewis": [{"seconds": 2.0}], "baseline": [{"seconds": 3.0}]},
        "io_wait_packed": {"lewis": [{"seconds": 0.4}]},
        "io_pool_drain": {"prefork": [{"tasks_per_s": 900.0}]},
        "io_pool_wait": {"prefork": [{"seconds": 5.0}], "threads": [{"seconds": 0.7}]},
    }
    for peer, figures in peers.items():
        for bench, value in figures.items():
            sample = {keys[bench]: value}
            if bench == "latency":
                sample["p99_ms"] = value * 2
            r[bench][peer] = [sample]
    machine = {"when": "now", "cpu": "cpu", "cores": 2, "python": "3.11", "versions": {}}
    return {
        "machine": machine,
        "runs": 1,
        "results": r,
        "peers": sorted(peers),
        "peer_batched": {
            p: ("gather" if "enqueue_batched" in f else None) for p, f in peers.items()
        },
    }


def _row(markdown: str, starts: str) -> list[str]:
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {starts}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_report_names_the_best_peer_of_each_row() -> None:
    # Given huey is fastest on round trips, dramatiq on drains, taskiq on waits and enqueue
    data = _platform(
        {
            "huey": {"latency": 0.9, "drain_io": 4000.0, "enqueue": 6000.0, "io_wait": 0.9},
            "dramatiq": {"latency": 5.0, "drain_io": 5000.0, "enqueue": 4000.0, "io_wait": 0.7},
            "taskiq": {
                "latency": 2.0,
                "drain_io": 1000.0,
                "enqueue": 3000.0,
                "enqueue_batched": 9000.0,
                "io_wait": 0.6,
            },
        }
    )
    # When the platform section is rendered
    md = render_platform(json.loads(json.dumps(data)))
    # Then lower wins for times, higher for rates, and each peer's best form counts
    assert _row(md, "Round trip p50")[6:9] == ["huey 0.90", "0.50", "1.67"]
    assert _row(md, "Drain, io queue")[6] == "dramatiq 5,000"
    assert _row(md, "Drain, cpu queue")[6] == "dramatiq 5,000"
    assert _row(md, "Enqueue, one call")[6] == "huey 6,000"
    assert _row(md, "Enqueue, `submit_many`")[3:7] == ["6,000", "4,000", "9,000", "taskiq 9,000"]
    assert _row(md, "2,000 tasks")[6] == "taskiq 0.60"


def test_the_report_renders_a_run_without_peers() -> None:
    md = render_platform(_platform({}))
    assert _row(md, "Round trip p50")[1:] == [
        "1.50",
        "3.00",
        "—",
        "—",
        "—",
        "—",
        "0.50",
        "—",
        "≤ 1.2",
    ]
    assert "Peers: not measured in this run" in md
