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

The platform suite measures huey, dramatiq and taskiq in the same run when their bench-only
packages (pinned in `bench/requirements-peers.txt`, never in pyproject) are installed;
`scripts/bench-peers` puts them in a venv of their own beside the checkout and runs there:

    scripts/bench-peers platform                          # LEWIS, Celery and the peers, 3 runs
    scripts/bench-peers platform --quick -r 1             # smoke test at tiny N, writes nothing

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


PEERS = ("huey", "dramatiq", "taskiq")  # bench.peers.PEERS, without importing the suite

# measure, LEWIS's (bench, key), Celery's bench, the peers' benches (their best form counts),
# lower is better, number format, goal
PLATFORM_ROWS: list[tuple[str, tuple[str, str], str, tuple[str, ...], bool, str, str]] = [
    (
        "Round trip p50 (ms), no-op, sequential",
        ("latency", "p50_ms"),
        "latency",
        ("latency",),
        True,
        "{:.2f}",
        "≤ 1.2",
    ),
    ("Round trip p99 (ms)", ("latency", "p99_ms"), "latency", ("latency",), True, "{:.2f}", "≤ 3"),
    (
        "Drain, io queue (tasks/s), 2 io worker processes",
        ("drain_io", "tasks_per_s"),
        "drain_io",
        ("drain_io",),
        False,
        "{:,.0f}",
        "≥ 1,750 (Celery's best)",
    ),
    (
        "… io no-ops through `submit_many` as shipped: packed by measured runtime (calls/s)",
        ("drain_io_default", "tasks_per_s"),
        "drain_io",
        ("drain_io",),
        False,
        "{:,.0f}",
        "≥ 4,150 (huey)",
    ),
    (
        "Drain, cpu queue (tasks/s), 1 worker × 2 children",
        ("drain_cpu", "tasks_per_s"),
        "drain_cpu",
        ("drain_io",),
        False,
        "{:,.0f}",
        "> 1,650",
    ),
    (
        "Enqueue, one call per task: LEWIS `submit`, Celery `send_task` (tasks/s)",
        ("enqueue", "tasks_per_s"),
        "enqueue",
        ("enqueue",),
        False,
        "{:,.0f}",
        "~2k",
    ),
    (
        "Enqueue, `submit_many` pipelined (tasks/s)",
        ("enqueue_batched", "tasks_per_s"),
        "enqueue",
        ("enqueue_batched", "enqueue"),
        False,
        "{:,.0f}",
        "≥ 10,000",
    ),
    (
        "2,000 tasks × 50 ms wait (s), ideal 0.5",
        ("io_wait", "seconds"),
        "io_wait",
        ("io_wait",),
        True,
        "{:.2f}",
        "≤ 1",
    ),
    (
        "… the same 2,000 tasks packed 50 to a message (s)",
        ("io_wait_packed", "seconds"),
        "io_wait",
        ("io_wait",),
        True,
        "{:.2f}",
        "≤ 1",
    ),
]


def _peer_value(
    r: dict[str, Any], peer: str, benches: tuple[str, ...], key: str, lower: bool
) -> float | None:
    """The peer's median for a row: its best form where it has several (enqueue)."""
    values = [_med(r[b][peer], key) for b in benches if r.get(b, {}).get(peer)]
    if not values:
        return None
    return min(values) if lower else max(values)


def platform_row(
    r: dict[str, Any], row: tuple[str, tuple[str, str], str, tuple[str, ...], bool, str, str]
) -> list[str]:
    """One table row: LEWIS, Celery, each peer, the best peer named, the ratios, the goal."""
    label, (bench, key), base_bench, peer_benches, lower, fmt, goal = row
    samples = r.get(bench, {}).get("lewis")
    ours = _med(samples, key) if samples else float("nan")
    base = _med(r[base_bench]["baseline"], key)
    peers = {p: _peer_value(r, p, peer_benches, key, lower) for p in PEERS}
    measured = {p: v for p, v in peers.items() if v is not None}
    best = (min if lower else max)(measured, key=measured.__getitem__) if measured else None
    ratio_fmt = "{:.2f}" if ours / base < 10 else "{:.1f}"
    cells = [
        label,
        fmt.format(ours),
        fmt.format(base),
        *(fmt.format(v) if v is not None else "—" for v in peers.values()),
        f"{best} {fmt.format(measured[best])}" if best else "—",
        ratio_fmt.format(ours / base),
        f"{ours / measured[best]:.2f}" if best else "—",
        goal,
    ]
    return cells


def render_platform(data: dict[str, Any]) -> str:
    r = data["results"]
    m = data["machine"]
    measured = data.get("peers", [])
    dio = _med(r["drain_io"]["lewis"], "tasks_per_s")
    header = [
        "measure",
        "LEWIS",
        "bare Celery",
        *PEERS,
        "best peer (anchor)",
        "LEWIS ÷ Celery",
        "LEWIS ÷ best peer",
        "goal",
    ]
    table = [
        f"| {' | '.join(header)} |",
        "|---|" + "---:|" * 5 + "---|---:|---:|---|",
        *(f"| {' | '.join(platform_row(r, row))} |" for row in PLATFORM_ROWS),
    ]
    batched = data.get("peer_batched", {})
    missing = [p for p in PEERS if p not in measured]
    lines = [
        "## Platform: the task system itself",
        "",
        machine_line(m),
        f"Medians of {data['runs']} runs. *Baseline* is bare Celery with its defaults (prefork "
        "`-c 2`, results on; for the 50 ms waits, Celery's threads pool, 2 × 100 threads) on the "
        "same private Redis in the same run; *LEWIS* is `lewis worker io|cpu` as shipped, io "
        "workers with 100 threads each (`LEWIS_WORKERS_IO_CONCURRENCY=100`). The peers run in "
        "the same run on the same Redis, interleaved with LEWIS and Celery, each in its own "
        "best-known setup for 2 worker processes: *huey* `huey_consumer -k process -w 2` "
        "(waits: 2 consumers × 100 threads; round trips with `notify_result`), *dramatiq* "
        "`dramatiq --processes 2` with `Results` on Redis (8 threads, 100 for the waits), "
        "*taskiq* `taskiq worker --workers 2` on taskiq-redis's `ListQueueBroker` and "
        "`RedisAsyncResultBackend`, async tasks (100 in flight per process). "
        "*Best peer* is the best of the three for that row; ÷ is LEWIS's figure over it "
        "(for times lower is better, for rates higher).",
        "",
        *table,
        "",
        "Peers' enqueue: one call per task is huey's task call, dramatiq's `send`, taskiq's "
        "`await kiq()`; on the pipelined row each peer shows its fastest way to send many: "
        + "; ".join(
            f"{p} {how or 'none but one call per task (that figure)'}" for p, how in batched.items()
        )
        + "."
        if batched
        else "Peers: not measured in this run (`scripts/bench-peers platform` "
        "installs and measures them).",
        *([f"Not measured in this run: {', '.join(missing)}."] if batched and missing else []),
        "A peer has one queue: its no-op drain stands beside both LEWIS drain rows, and its "
        "unpacked waits beside the packed row.",
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
        "`submit(...).wait()` with its defaults, by push on the thread's own connection; "
        "Celery `send_task(...).get()`, huey `task().get(blocking=True)`, "
        "dramatiq `send().get_result(block=True)`, taskiq `(await kiq()).wait_result()`; "
        "pollers poll every 0.5 ms); drain = "
        "10,000 no-ops pushed at once with `submit_many` (the peers: their own calls) into "
        "running workers, timed until the last result exists (DBSIZE on a results-only db; "
        "huey keeps results in one hash: HLEN); enqueue = 5,000 single submits "
        "with no worker running, and 50,000 through `submit_many`; 50 ms waits = 2,000 tasks "
        "pushed at once, timed until the last result; packed = `submit_many(..., pack=50)`: "
        "each task keeps its own id, handle and stored result, 50 travel in one message "
        "and run concurrently on the io worker's event loop; as shipped = 500 no-ops sent "
        "one to a message first (so the workers report a runtime), then 10,000 through "
        "`submit_many` without `pack`, packed by that measurement"
        + _packs(r)
        + ", every call's own result counted. Reproduce, peers included: "
        "`scripts/bench-peers platform`.",
    ]
    return "\n".join(lines)


def _packs(r: dict[str, Any]) -> str:
    """The pack sizes the default chose in the as-shipped drain runs."""
    packs = sorted({run["pack"] for run in r.get("drain_io_default", {}).get("lewis", [])})
    return f" ({', '.join(map(str, packs))} calls to a message)" if packs else ""


def render_suite(suite: str, data: dict[str, Any]) -> str:
    """One suite's ``## …`` section from its stored results."""
    if suite == "platform":
        return render_platform(data)
    return str(importlib.import_module(f"bench.{suite}").render(data))


def write_markdown(results_dir: Path, out: Path) -> None:
    """The whole file from stored results alone (hand-written sections are not in them:
    ``bench.run`` replaces only the sections it measured, with replace_section)."""
    parts = [HEADER]
    for path in sorted(results_dir.glob("*.json")):
        try:
            parts.append(render_suite(path.stem, json.loads(path.read_text())))
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
