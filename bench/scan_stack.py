"""A full-range scan through `lewis up` as shipped, beside nmap, from the shell (issue 18.4).

    python -m bench.scan_stack [--runs 5] [--json bench/results/scan_stack.json]

Two stacks run side by side, each started by ``lewis up --detach`` in its own home with its
own embedded Redis and SQLite, nothing else set: *per core* is today's default (one io
worker per usable core, ``scaling.io_min_workers``), *one io* the previous default
(``LEWIS_SCALING_IO_MIN_WORKERS=1``). 300 loopback listeners (``tests/support/listeners.py
--seed 7``) are open on 127.0.0.1. Each run times, in a rotating order, ``lewis scan
127.0.0.1 -p - --no-services --json`` against each stack and ``nmap -sT -p- -T4 -n -Pn
127.0.0.1``, every one a fresh process from spawn to exit; the open set of each is compared
with the kernel's listening set. CPU: the scanning side's CPU seconds per run (the stack's
processes' user+system time, read with psutil before and after, plus the `lewis` command's;
nmap's own rusage), the figure that transfers to a machine with more cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.harness import ROOT, median
from bench.scan import ADDRESS, _listeners, _listening, _nmap_full

LEWIS = str(Path(sys.executable).with_name("lewis"))
STACKS = {"per core": {}, "one io": {"LEWIS_SCALING_IO_MIN_WORKERS": "1"}}


def _env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEWIS_")}
    return {**base, "LEWIS_STACK_HOME": str(home), "PYTHONPATH": str(ROOT), **extra}


@contextmanager
def _stack(home: Path, extra: dict[str, str]) -> Iterator[dict[str, str]]:
    env = _env(home, extra)
    subprocess.run([LEWIS, "up", "--detach", "--timeout", "120"], env=env, check=True, cwd=ROOT)
    try:
        yield env
    finally:
        subprocess.run([LEWIS, "down"], env=env, cwd=ROOT, capture_output=True)


def _stack_cpu(home: Path) -> dict[str, float]:
    """User+system seconds so far of the stack's processes (workers' children too), by group:
    io (every io worker), cpu, and the rest (supervisor, Redis, control, beat, Flower, monitor)."""
    import psutil

    info = json.loads((home / "stack.json").read_text())
    out = {"io": 0.0, "cpu": 0.0, "rest": 0.0}
    seen: set[int] = set()  # the supervisor's children are the other processes: count once
    for name, pid in [*info["processes"].items(), ("supervisor", info["supervisor_pid"])]:
        group = name.split("-")[0] if name.split("-")[0] in out else "rest"
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                if p.pid not in seen:
                    seen.add(p.pid)
                    t = p.cpu_times()
                    out[group] += t.user + t.system
        except psutil.Error:
            continue
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _lewis_scan(env: dict[str, str], home: Path) -> dict[str, Any]:
    before = _listening()
    stack0, kids0 = _stack_cpu(home), _children_cpu()
    began = time.perf_counter()
    done = subprocess.run(
        [LEWIS, "scan", ADDRESS, "-p", "-", "--no-services", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    stack1, command = _stack_cpu(home), _children_cpu() - kids0
    parts = {group: stack1[group] - stack0[group] for group in stack0}
    parts["command"] = command
    cpu = sum(parts.values())
    if done.returncode != 0:
        raise RuntimeError(f"lewis scan failed ({done.returncode}): {done.stderr[-500:]}")
    report = json.loads(done.stdout)
    ours = {p["port"] for h in report["hosts"] for p in h["open_ports"]}
    stable = before & _listening()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "cpu_parts": parts,
        "open": len(ours),
        "exact": ours == stable,
    }


def _nmap() -> dict[str, Any]:
    before = _listening()
    kids0 = _children_cpu()
    seconds, found = _nmap_full()
    stable = before & _listening()
    return {
        "seconds": seconds,
        "cpu_s": _children_cpu() - kids0,
        "open": len(found),
        "exact": found == stable,
    }


def run(runs: int) -> dict[str, Any]:
    from bench.run import machine

    out: dict[str, list[dict[str, Any]]] = {name: [] for name in [*STACKS, "nmap"]}
    io_workers: dict[str, int] = {}
    # the homes outlive the stacks: `lewis down` finds a stack by its home's stack.json (the
    # other order removed the homes first and left both stacks running after the bench)
    with _listeners(), tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        envs = {}
        for name, extra in STACKS.items():
            home = Path(tmp) / name.replace(" ", "-")
            envs[name] = (stack.enter_context(_stack(home, extra)), home)
            info = json.loads((home / "stack.json").read_text())
            io_workers[name] = sum(1 for n in info["processes"] if n.split("-")[0] == "io")
        for env, home in envs.values():  # warm-up: imports, first SQLite pages
            _lewis_scan(env, home)
        order = [*STACKS, "nmap"]
        for i in range(runs):
            for name in order[i % len(order) :] + order[: i % len(order)]:
                got = _nmap() if name == "nmap" else _lewis_scan(*envs[name])
                out[name].append(got)
            print(
                "  "
                + "  ".join(
                    f"{n} {out[n][-1]['seconds']:.2f} s (cpu {out[n][-1]['cpu_s']:.2f}, "
                    f"exact {out[n][-1]['exact']})"
                    for n in order
                ),
                flush=True,
            )
    return {"machine": machine(), "runs": runs, "io_workers": io_workers, "results": out}


def render(data: dict[str, Any]) -> str:
    res = data["results"]
    nmap_s = median([r["seconds"] for r in res["nmap"]])
    nmap_cpu = median([r["cpu_s"] for r in res["nmap"]])
    rows = [
        "| scanner | io workers | wall (s), median | ÷ nmap | CPU s per full range | ÷ nmap "
        "| exact runs |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    parts = []
    for name, runs in res.items():
        if name != "nmap":
            split = {g: median([r["cpu_parts"][g] for r in runs]) for g in runs[0]["cpu_parts"]}
            parts.append(f"{name}: " + ", ".join(f"{g} {v:.2f}" for g, v in split.items()))
        wall = median([r["seconds"] for r in runs])
        cpu = median([r["cpu_s"] for r in runs])
        exact = sum(r["exact"] for r in runs)
        label = "nmap -sT -p- -T4" if name == "nmap" else f"`lewis up` ({name})"
        workers = data["io_workers"].get(name, "")
        rows.append(
            f"| {label} | {workers} | {wall:.2f} | {wall / nmap_s:.2f} | {cpu:.2f} | "
            f"{cpu / nmap_cpu:.2f} | {exact}/{len(runs)} |"
        )
    return "\n".join(rows) + "\n\nCPU seconds by process group (medians): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = run(args.runs)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    print(render(data))


if __name__ == "__main__":
    main()
