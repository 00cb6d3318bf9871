"""Interactive speed: how long each `lewis` command takes from the shell, beside nmap and
Celery's own CLI, and where the command's imports go.

    python -m bench.interactive [--runs 7] [--importtime 5]

Needs a running stack (`lewis up --detach`; this finds it as every `lewis` command does, by
LEWIS_STACK_HOME or ./.lewis). Each run starts every command once as a fresh process, in
turn (interleaved, so a busy minute on a shared machine hits them all alike), and times it
from spawn to exit; the figures are medians over the runs. The `lewis` console script runs
with this checkout first on PYTHONPATH. An HTTP server on loopback answers `lewis http`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.harness import ROOT, median

HOST = "127.0.0.1"
CODE = ROOT  # the checkout whose `lewis` is timed (--code: another one, say main, as a baseline)
GROUPS = (
    "lewis_tasks",
    "celery",
    "kombu",
    "sqlalchemy",
    "redis",
    "click",
    "aiohttp",
    "billiard",
    "vine",
    "amqp",
    "yarl",
    "multidict",
)


def commands(url: str) -> dict[str, list[str]]:
    """Label → argv, every one a fresh process as a user at a shell starts it."""
    lewis = str(Path(sys.executable).with_name("lewis"))
    celery = str(Path(sys.executable).with_name("celery"))
    return {
        "lewis --help": [lewis, "--help"],
        f"lewis scan {HOST} -p 80": [lewis, "scan", HOST, "-p", "80"],
        f"lewis scan {HOST} -p 22,80,443": [lewis, "scan", HOST, "-p", "22,80,443"],
        "lewis http URL": [lewis, "http", url],
        "lewis status": [lewis, "status"],
        f"nmap -p 80 {HOST}": ["nmap", "-p", "80", HOST],
        "celery -A … inspect ping": [
            celery,
            "-A",
            "lewis_tasks.infra.celery_app",
            "inspect",
            "ping",
            "--timeout",
            "1",
        ],
    }


def env(code: Path | None = None) -> dict[str, str]:
    code = code or CODE
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{code}{os.pathsep}{path}" if path else str(code),
        "NO_COLOR": "1",
    }


def timed(argv: Sequence[str], code: Path | None = None) -> tuple[float, int]:
    began = time.perf_counter()
    proc = subprocess.run(
        argv,
        env=env(code),
        cwd=code or CODE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    took = time.perf_counter() - began
    if proc.returncode not in (0, 1):  # 1: a finding or a failed URL is still an answer
        sys.stderr.write(
            f"{' '.join(argv)}: exit {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-300:]}\n"
        )
    return took, proc.returncode


def wall_times(
    runs: int, cmds: dict[str, list[str]], checkout: dict[str, Path] | None = None
) -> dict[str, dict[str, Any]]:
    """Label → median/min/max seconds; ``checkout`` names another checkout for some labels."""
    checkout = checkout or {}
    samples: dict[str, list[float]] = defaultdict(list)
    codes: dict[str, set[int]] = defaultdict(set)
    for label, argv in cmds.items():  # one warm-up each: page cache, pyc files, DNS
        timed(argv, checkout.get(label))
    for _ in range(runs):
        for label, argv in cmds.items():
            took, code = timed(argv, checkout.get(label))
            samples[label].append(took)
            codes[label].add(code)
    return {
        label: {
            "median_s": round(median(v), 3),
            "min_s": round(min(v), 3),
            "max_s": round(max(v), 3),
            "runs": len(v),
            "exit": sorted(codes[label]),
        }
        for label, v in samples.items()
    }


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(argv: Sequence[str], runs: int) -> dict[str, Any]:
    """Median import time of one command by top-level package (self times summed), from
    ``python -X importtime``; ``total`` is every import, ``lewis_tasks`` our modules' own."""
    per_run: list[dict[str, float]] = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", *argv],
            env=env(),
            cwd=CODE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        groups: dict[str, float] = defaultdict(float)
        for match in _LINE.finditer(proc.stderr.decode(errors="replace")):
            self_us, name = int(match.group(1)), match.group(4)
            top = name.split(".")[0]
            groups[top if top in GROUPS else "other (stdlib, small libraries)"] += self_us / 1e3
            groups["total"] += self_us / 1e3
        per_run.append(groups)
    keys = sorted(
        {k for g in per_run for k in g}, key=lambda k: -median([g.get(k, 0.0) for g in per_run])
    )
    return {k: round(median([g.get(k, 0.0) for g in per_run]), 1) for k in keys}


# What one `lewis scan HOST -p 80` spends where, in one fresh process: the steps the command
# takes, timed one after another. A one-chunk scan is sent and awaited without Celery's app and
# without the database (its task records the scan and returns the report): the last entry
# names whichever of them the process loaded anyway (none, when all is well).
PHASES = """
import json, sys, time
t = [time.perf_counter()]
def mark(): t.append(time.perf_counter())
import click; import lewis_tasks.cli; mark()
from lewis_tasks.infra.config import get_settings; get_settings(); mark()
from lewis_tasks.producer.scan import submit_scan; mark()
handle = submit_scan([sys.argv[1]], ports="80"); mark()
report = handle.wait(timeout=30); mark()
names = ["click + lewis_tasks.cli", "settings", "the scan producer (targets, scope, planning, redis)",
         "submit (checks, running slot, send)", "wait (task, push; the report with the result)"]
steps = dict(zip(names, (round((b - a) * 1000, 1) for a, b in zip(t, t[1:]))))
heavy = sorted(m for m in ("celery", "kombu", "sqlalchemy") if m in sys.modules)
print(json.dumps({**steps, "loaded anyway": heavy}))
from lewis_tasks.cli import _skip_teardown_collection; _skip_teardown_collection()  # as main()
"""


def scan_breakdown(runs: int) -> dict[str, float]:
    """Median milliseconds per step of a one-port scan (plus Python's own start-up)."""
    per_run = []
    for _ in range(runs):
        began = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", PHASES, HOST],
            env=env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        total = (time.perf_counter() - began) * 1000
        steps = json.loads(proc.stdout.strip().splitlines()[-1])
        heavy = steps.pop("loaded anyway")
        if heavy:  # the fast path regressed: say so in the results rather than hide it
            raise SystemExit(f"lewis scan -p 80 loaded {', '.join(heavy)}")
        steps["interpreter start-up and exit"] = round(total - sum(steps.values()), 1)
        per_run.append(steps)
    return {k: round(median([r[k] for r in per_run]), 1) for k in per_run[0]}


@contextlib.contextmanager
def http_server() -> Iterator[str]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (the stdlib's name)
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, *_args: Any) -> None:  # a client closing keep-alive: no trace
            pass

    server = Server((HOST, 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def run(
    runs: int, import_runs: int, steps: bool = True, versus: Path | None = None
) -> dict[str, Any]:
    with http_server() as url:
        cmds = commands(url)
        if shutil.which("nmap") is None:
            del cmds[f"nmap -p 80 {HOST}"]
        checkout: dict[str, Path] = {}
        if versus is not None:  # the same lewis commands from another checkout, in the same turns
            for label, argv in list(cmds.items()):
                if label.startswith("lewis"):
                    cmds[f"{label} [{versus.name}]"] = argv
                    checkout[f"{label} [{versus.name}]"] = versus
        walls = wall_times(runs, cmds, checkout)
        lewis_m = ["-m", "lewis_tasks.cli"]
        imports = {
            "lewis --help": import_profile([*lewis_m, "--help"], import_runs),
            f"lewis scan {HOST} -p 80": import_profile(
                [*lewis_m, "scan", HOST, "-p", "80"], import_runs
            ),
            "lewis http URL": import_profile([*lewis_m, "http", url], import_runs),
            "lewis status": import_profile([*lewis_m, "status"], import_runs),
        }
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": runs,
        "cores": os.cpu_count(),
        "wall": walls,
        "imports_ms": imports,
        "code": str(CODE),
        "scan_steps_ms": scan_breakdown(import_runs) if steps else {},
    }


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Medians of {data['runs']} interleaved runs, {data['when']}, {data['cores']} "
        f"cores (shared with other work), `lewis` from {data['code']}:",
        "",
        "| command | median | min | max |",
        "|---|---|---|---|",
    ]
    for label, w in data["wall"].items():
        lines.append(
            f"| `{label}` | {w['median_s']:.3f} s | {w['min_s']:.3f} s | {w['max_s']:.3f} s |"
        )
    lines += [
        "",
        "Import time by package (`python -X importtime`, self times summed, median, ms):",
        "",
    ]
    cols = sorted(
        {k for v in data["imports_ms"].values() for k in v},
        key=lambda k: -max(v.get(k, 0) for v in data["imports_ms"].values()),
    )
    lines.append("| command | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for label, groups in data["imports_ms"].items():
        lines.append(f"| `{label}` | " + " | ".join(f"{groups.get(c, 0):.0f}" for c in cols) + " |")
    if not data["scan_steps_ms"]:
        return "\n".join(lines)
    lines += [
        "",
        f"`lewis scan {HOST} -p 80` step by step (median ms, one fresh process each):",
        "",
        "| step | ms |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in data["scan_steps_ms"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--importtime", type=int, default=5, help="runs of -X importtime")
    parser.add_argument("--json", type=Path, default=None, help="also write the data here")
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT,
        help="time the `lewis` of this checkout (a baseline; no step table)",
    )
    parser.add_argument("--no-steps", action="store_true", help="skip the step-by-step table")
    parser.add_argument(
        "--versus",
        type=Path,
        default=None,
        help="also time the lewis commands of this checkout, in the same turns",
    )
    args = parser.parse_args(argv)
    global CODE
    CODE = args.code.resolve()
    data = run(
        args.runs,
        args.importtime,
        steps=not args.no_steps and CODE == ROOT,
        versus=args.versus.resolve() if args.versus else None,
    )
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
