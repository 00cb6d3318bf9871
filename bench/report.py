"""Render BENCHMARKS.md from the stored suite results (bench/results/*.json)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from .harness import median

HEADER = """# Benchmarks

Measured by `bench/`, side by side with the anchors of `../shared/ANCHORS.md`, in one run on
this machine; medians of the runs shown. Reproduce everything with:

    .venv/bin/python -m bench.run            # all suites, 3 runs each (~10 min)
    .venv/bin/python -m bench.run platform   # one suite

The machine is shared and has 2 cores: treat differences under ~15 % as noise.
"""


def _med(samples: list[dict[str, Any]], key: str) -> float:
    return median([s[key] for s in samples])


def machine_line(m: dict[str, Any]) -> str:
    """The one line every suite's section opens with: when, on what, with which versions."""
    parts = [m["when"], m["cpu"], f"{m['cores']} cores"]
    if m.get("memory_gb"):
        parts.append(f"{m['memory_gb']} GB")
    parts.append(f"Python {m['python']}")
    parts += [f"{k} {v}" for k, v in m.get("versions", {}).items()]
    return " · ".join(parts)


def render_platform(data: dict[str, Any]) -> str:
    r = data["results"]
    m = data["machine"]

    def pair(bench: str, key: str) -> tuple[float, float]:
        return _med(r[bench]["lewis"], key), _med(r[bench]["baseline"], key)

    lat50, base50 = pair("latency", "p50_ms")
    lat99, base99 = pair("latency", "p99_ms")
    dio, dbase = pair("drain_io", "tasks_per_s")
    dcpu, dbase2 = pair("drain_cpu", "tasks_per_s")
    enq, enq_base = pair("enqueue", "tasks_per_s")
    batched = _med(r["enqueue_batched"]["lewis"], "tasks_per_s")
    iow, iow_base = pair("io_wait", "seconds")
    packed = r.get("io_wait_packed", {}).get("lewis")
    iow_packed = _med(packed, "seconds") if packed else float("nan")
    rows = [
        ("Round trip p50 (ms), no-op, sequential", f"{lat50:.2f}", f"{base50:.2f}", f"{lat50 / base50:.2f}", "≤ 1.5 (huey 0.9)"),
        ("Round trip p99 (ms)", f"{lat99:.2f}", f"{base99:.2f}", f"{lat99 / base99:.2f}", "≤ 3 (huey 1.7)"),
        ("Drain, io queue (tasks/s), 2 io worker processes", f"{dio:,.0f}", f"{dbase:,.0f}", f"{dio / dbase:.2f}", "> 1,650 (huey 4,080)"),
        ("Drain, cpu queue (tasks/s), 1 worker × 2 children", f"{dcpu:,.0f}", f"{dbase2:,.0f}", f"{dcpu / dbase2:.2f}", "> 1,650"),
        ("Enqueue, one call per task: LEWIS `submit`, Celery `send_task` (tasks/s)", f"{enq:,.0f}", f"{enq_base:,.0f}", f"{enq / enq_base:.2f}", "~2k"),
        ("Enqueue, `submit_many` pipelined (tasks/s)", f"{batched:,.0f}", f"{enq_base:,.0f}", f"{batched / enq_base:.1f}", "≥ 10,000"),
        ("2,000 tasks × 50 ms wait (s), ideal 0.5", f"{iow:.2f}", f"{iow_base:.2f}", f"{iow / iow_base:.2f}", "≤ 1 (taskiq 0.68, Celery threads 2.8)"),
        ("… the same 2,000 tasks packed 50 to a message (s)", f"{iow_packed:.2f}", f"{iow_base:.2f}", f"{iow_packed / iow_base:.2f}", "≤ 1"),
    ]
    lines = [
        "## Platform: the task system itself",
        "",
        machine_line(m),
        f"Medians of {data['runs']} runs. *Baseline* is bare Celery with its defaults (prefork "
        "`-c 2`, results on; for the 50 ms waits, Celery's threads pool, 2 × 100 threads) on the "
        "same private Redis in the same run; *LEWIS* is `lewis worker io|cpu` as shipped, io "
        "workers with 100 threads each (`LEWIS_WORKERS_IO_CONCURRENCY=100`).",
        "",
        "| measure | LEWIS | bare Celery | ratio | goal / anchor |",
        "|---|---:|---:|---:|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        "**The io pool, measured** (the io profile's own choice, same run): "
        f"no-op drain on 2 io workers — threads {dio:,.0f}/s vs prefork (2 × 2 children) "
        f"{_med(r['io_pool_drain']['prefork'], 'tasks_per_s'):,.0f}/s; 400 tasks × 50 ms "
        f"waits — threads {_med(r['io_pool_wait']['threads'], 'seconds'):.2f} s vs prefork "
        f"{_med(r['io_pool_wait']['prefork'], 'seconds'):.2f} s (ideal 0.1 s at 200-way, "
        "5 s at prefork's 4-way). Threads: each io process keeps one event loop and one aiohttp "
        "session, and any number of waits in flight on them; prefork would give one loop per "
        "child and one task in flight per child. The io profile therefore runs threads.",
        "",
        "How: latency = 400 sequential round trips after 30 warm-up calls (LEWIS "
        "`submit(...).wait()`, Celery `send_task(...).get()`); drain = "
        "10,000 no-ops pushed at once with `submit_many` into running workers, timed until the "
        "last result key exists (DBSIZE on a results-only db); enqueue = 5,000 single submits "
        "with no worker running, and 50,000 through `submit_many`; 50 ms waits = 2,000 tasks "
        "pushed at once, timed until the last result; packed = `submit_many(..., pack=50)`: "
        "each task keeps its own id, handle and stored result, 50 travel in one message "
        "and run concurrently on the io worker's event loop.",
    ]
    return "\n".join(lines)


def write_markdown(results_dir: Path, out: Path) -> None:
    parts = [HEADER]
    for path in sorted(results_dir.glob("*.json")):
        suite = path.stem
        data = json.loads(path.read_text())
        if suite == "platform":
            parts.append(render_platform(data))
        else:
            try:
                parts.append(importlib.import_module(f"bench.{suite}").render(data))
            except (ModuleNotFoundError, AttributeError):
                continue
    extra = results_dir / "notes.md"
    if extra.exists():
        parts.append(extra.read_text())
    out.write_text("\n\n".join(p.strip() for p in parts) + "\n")


def replace_section(out: Path, section: str) -> None:
    """Put ``section`` (a rendered ``## …`` block) in place of the block with its heading,
    leaving every other section of ``out`` as it is (write_markdown drops the sections no
    stored result renders, such as the hand-written Fleet one)."""
    heading = section.splitlines()[0]
    lines = out.read_text().splitlines()
    if heading not in lines:
        out.write_text("\n".join(lines).rstrip("\n") + "\n\n" + section.strip() + "\n")
        return
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = ["", *lines[end:]] if end < len(lines) else []
    out.write_text("\n".join([*lines[:start], *section.strip().splitlines(), *tail]) + "\n")
