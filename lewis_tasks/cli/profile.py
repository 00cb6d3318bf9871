"""``lewis profile``, ``lewis diagnose``, ``lewis bench run|report``: where time and memory go.

Tables on a terminal, JSON with ``--json``. Profiles, diagnoses and function benchmarks run in
cpu workers (the commands submit and wait); cluster benchmarks run here, in this process,
because they wait on no-op tasks that need every worker slot (see producer/clusterbench.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, InvalidInput, TransientError
from . import SECONDS, cli

WAIT_SLACK = 30.0  # seconds of queueing allowed on top of a run's own bound


def _value(text: str) -> Any:
    """A command-line argument as JSON when it parses (``0.2``, ``[1,2]``, ``true``), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _kwargs(pairs: Sequence[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--kwarg {pair!r}: expected KEY=VALUE")
        out[key] = _value(raw)
    return out or None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _note(message: str) -> None:
    """A progress line, only for a person at a terminal (never in pipes or JSON output)."""
    if sys.stdout.isatty():
        click.echo(message, err=True)


def _wait(handle: Any, timeout: float, what: str) -> Any:
    from celery.exceptions import TimeoutError as ResultTimeout

    try:
        return handle.wait(timeout=timeout)
    except ResultTimeout:
        raise TransientError(
            f"no {what} result within {timeout:.0f}s (task {handle.id}): is a "
            "cpu worker running? `lewis status` shows the workers"
        ) from None


def _run_bound(max_seconds: float | None) -> float:
    from ..infra.config import get_settings

    settings = get_settings()
    return (max_seconds or settings.profiling.max_seconds) + WAIT_SLACK


# ---------------------------------------------------------------- lewis profile


@cli.command("profile")
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option(
    "--kwarg",
    "-k",
    "kwarg_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A keyword argument (VALUE as JSON, else text); repeatable.",
)
@click.option(
    "--top",
    "top_n",
    type=int,
    default=None,
    help="Rows per table (default and cap: profiling.top_n).",
)
@click.option(
    "--no-memory", is_flag=True, help="Skip tracemalloc (less overhead, no allocation sites)."
)
@click.option(
    "--pstats",
    "pstats_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the raw profile here (open with `python -m pstats` or snakeviz).",
)
@click.option(
    "--max-seconds",
    type=SECONDS,
    default=None,
    help="Stop the run after this long (cap: profiling.max_seconds).",
)
@click.option("--timeout", type=SECONDS, default=None, help="Seconds to wait for the result.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile_command(
    task: str,
    args: tuple[str, ...],
    kwarg_pairs: tuple[str, ...],
    top_n: int | None,
    no_memory: bool,
    pstats_file: Path | None,
    max_seconds: float | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Profile registered TASK once in a cpu worker: top functions by cumulative and own time,
    top allocation sites, wall and CPU seconds. ARGS are its positional arguments (JSON, else
    text). A TASK that raises still gives its profile, with the exception shown."""
    from ..producer.profile import profile_report_from_dict, submit_profile

    if pstats_file is not None and not pstats_file.parent.is_dir():
        raise InvalidInput(
            f"--pstats {str(pstats_file)!r}: no directory {str(pstats_file.parent)!r}"
        )
    handle = submit_profile(
        task,
        [_value(a) for a in args] if args else None,
        _kwargs(kwarg_pairs),
        top_n=top_n,
        trace_memory=not no_memory,
        max_seconds=max_seconds,
        return_pstats=pstats_file is not None,
    )
    _note(f"profiling {task} in a cpu worker (task {handle.id})…")
    result = _wait(handle, timeout or _run_bound(max_seconds), "profile")
    if pstats_file is not None:
        handle.save_pstats(pstats_file)
    shown = {k: v for k, v in result.items() if k != "pstats_b64"}
    if pstats_file is not None:
        shown["pstats_file"] = str(pstats_file)
    if as_json:
        _echo_json(shown)
        return
    width = 160 if sys.stdout.isatty() else 200
    click.echo(profile_report_from_dict(result).format_table(width=width))
    if pstats_file is not None:
        click.echo(f"saved here: {pstats_file}")


# ---------------------------------------------------------------- lewis diagnose


@cli.command("diagnose")
@click.option(
    "--worker", default=None, metavar="NAME", help="Only this worker (as `lewis status` names it)."
)
@click.option(
    "--interval",
    type=SECONDS,
    default=0.2,
    show_default=True,
    help="Seconds each worker samples CPU over.",
)
@click.option(
    "--timeout",
    type=SECONDS,
    default=60.0,
    show_default=True,
    help="Seconds to wait for the report.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diagnose_command(worker: str | None, interval: float, timeout: float, as_json: bool) -> None:
    """Ask every live worker (or one) for its system resources, pool use and advice; print one
    cluster report, worst worker first."""
    from ..producer.profile import cluster_diagnosis_from_dict, submit_diagnose

    handle = submit_diagnose(worker, interval=interval)
    _note(f"diagnosing {'worker ' + worker if worker else 'every live worker'} (task {handle.id})…")
    result = _wait(handle, timeout, "diagnosis")
    if as_json:
        _echo_json(result)
        return
    click.echo(cluster_diagnosis_from_dict(result).format_table())
    for name, error in sorted((result.get("errors") or {}).items()):
        click.echo(f"{name}: diagnose failed there: {error}")


# ---------------------------------------------------------------- lewis bench


@cli.group("bench")
def bench_group() -> None:
    """Benchmarks of the running stack and of registered callables; reports over stored runs."""


@bench_group.command("run")
@click.argument("suite", default="cluster")
@click.argument("args", nargs=-1)
@click.option(
    "--kwarg",
    "-k",
    "kwarg_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A keyword argument of a function benchmark's target; repeatable.",
)
@click.option(
    "--iterations",
    type=int,
    default=None,
    help="Calls of a function target (default 100; 20 each for `functions`).",
)
@click.option("--warmup", type=int, default=0, show_default=True, help="Untimed calls first.")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Call the target from this many threads at once (tasks/s and latency).",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    default=("io", "cpu"),
    show_default=True,
    help="Queues of a cluster benchmark; repeatable.",
)
@click.option(
    "--samples",
    type=int,
    default=200,
    show_default=True,
    help="Round trips per queue (cluster latency).",
)
@click.option(
    "--tasks",
    type=int,
    default=2000,
    show_default=True,
    help="No-ops per queue (cluster throughput).",
)
@click.option(
    "--scan-ports",
    default="1-20000",
    show_default=True,
    help="Ports of 127.0.0.1 the scan benchmark probes.",
)
@click.option(
    "--url",
    default=None,
    help="Load-test target of the http benchmark (in scope; "
    "default: a 512-byte aiohttp server this command starts on 127.0.0.1).",
)
@click.option("--http-concurrency", type=int, default=100, show_default=True)
@click.option(
    "--duration", type=float, default=5.0, show_default=True, help="Seconds of the http load test."
)
@click.option(
    "--max-seconds",
    type=SECONDS,
    default=None,
    help="Bound of each measurement (cap: profiling.max_seconds).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_run(
    suite: str,
    args: tuple[str, ...],
    kwarg_pairs: tuple[str, ...],
    iterations: int | None,
    warmup: int,
    concurrency: int | None,
    queues: tuple[str, ...],
    samples: int,
    tasks: int,
    scan_ports: str,
    url: str | None,
    http_concurrency: int,
    duration: float,
    max_seconds: float | None,
    as_json: bool,
) -> None:
    """Run SUITE and store its figures. SUITE: `cluster` (default: all of `latency` and
    `throughput` per queue, `scan` ports/s and `http` requests/s — through the broker, measured
    from here), one of those four, `functions` (every registered target, in a cpu worker), or
    the name of one registered target, with its ARGS."""
    from ..producer.clusterbench import CLUSTER_SUITES, benchmark_cluster
    from ..report.runs import record_benchmark_run

    if suite in ("cluster", *CLUSTER_SUITES):
        chosen = CLUSTER_SUITES if suite == "cluster" else (suite,)
        result = benchmark_cluster(
            chosen,
            queues=queues,
            samples=samples,
            tasks=tasks,
            scan_ports=scan_ports,
            http_url=url,
            http_concurrency=http_concurrency,
            http_duration=duration,
            max_seconds=max_seconds,
            on_step=_note,
            record=record_benchmark_run,
        )
        if as_json:
            _echo_json(result.to_dict())
        else:
            click.echo(result.format_table())
        return
    if suite == "functions":
        from ..domain.benchtargets import target_names

        targets: list[tuple[str, list[Any] | None, dict[str, Any] | None]] = [
            (name, None, None) for name in target_names()
        ]
        iterations = iterations or 20
    else:
        targets = [(suite, [_value(a) for a in args] if args else None, _kwargs(kwarg_pairs))]
    results = [
        _bench_function(name, a, k, iterations, warmup, concurrency, max_seconds)
        for name, a, k in targets
    ]
    if as_json:
        _echo_json(results if suite == "functions" else results[0])
        return
    from ..producer.profile import benchmark_stats_from_dict

    for ran in results:
        stats = benchmark_stats_from_dict(ran["stats"], concurrent=ran["kind"] == "concurrent")
        click.echo(f"{stats.format_table()}\n  (run {ran['id']} on {ran['worker']}, stored)")


def _bench_function(
    target: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    iterations: int | None,
    warmup: int,
    concurrency: int | None,
    max_seconds: float | None,
) -> dict[str, Any]:
    from ..producer.profile import submit_benchmark

    handle = submit_benchmark(
        target,
        iterations=iterations,
        warmup=warmup,
        concurrency=concurrency,
        args=args,
        kwargs=kwargs,
        max_seconds=max_seconds,
    )
    _note(f"benchmarking {target} in a cpu worker (task {handle.id})…")
    result: dict[str, Any] = _wait(handle, _run_bound(max_seconds), "benchmark")
    return result


@bench_group.command("report")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-report.html"),
    show_default=True,
    help="The HTML report.",
)
@click.option(
    "--png",
    "png_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The chart as PNG (default: next to the HTML, .png).",
)
@click.option(
    "--suite",
    default="cluster",
    show_default=True,
    help="Runs of this suite: cluster (the stack per queue), function, or all.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="The newest runs to include.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def bench_report(
    html_file: Path, png_file: Path | None, suite: str | None, limit: int, as_json: bool
) -> None:
    """Write a self-contained HTML report (charts of throughput and latency over runs, per
    queue; the latest figures; the machines) and the same charts as a PNG, from stored runs."""
    try:
        from ..report.bench_report import render_report
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in {"matplotlib", "numpy"}:
            raise
        raise ConfigError(
            "`lewis bench report` draws its charts with matplotlib, which this "
            "install lacks: pip install 'lewis-tasks[report]'"
        ) from exc
    from ..report.runs import load_benchmark_runs

    png_file = png_file or html_file.with_suffix(".png")
    runs = load_benchmark_runs(limit=limit, suite=None if suite == "all" else suite)
    written = render_report(runs, html_file, png_file)
    if as_json:
        _echo_json(
            {
                "html": written.html_path,
                "png": written.png_path,
                "runs": written.runs,
                "series": written.series,
            }
        )
        return
    click.echo(
        f"wrote {written.html_path} and {written.png_path}: {written.runs} runs in "
        f"{written.series} series"
    )
