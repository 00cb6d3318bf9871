"""``lewis http`` (fetch a batch of URLs) and ``lewis loadtest`` (load one endpoint).

Both submit to the running stack, show a live progress line when stdout is a terminal, then a
final table (or JSON with ``--json``). ``lewis http`` exits 1 when some URL failed;
``lewis loadtest`` exits 1 when no request was answered at all. Neither waits forever: past
``--wait`` (by default, as long as the work may take at worst) they say so in one line and
exit 3.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from ..domain.httpjobs import HttpBatchProgress, LoadtestProgress, LoadtestResult
from ..errors import InvalidInput, TransientError
from . import Exit, cancel_or_leave, cli

if TYPE_CHECKING:
    from ..infra.config import Settings
    from ..producer.handle import JobHandle

P = TypeVar("P")
R = TypeVar("R")
COLLECT_AFTER_CANCEL = 30.0  # s to wait for a cancelled load test's merged result

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``10s``, ``1m``, ``500ms``, ``1.5h`` or a bare number of seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise InvalidInput(f"{text!r} is not a duration (like 10s, 1m, 500ms)")
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


class Duration(click.ParamType):
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(value)
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def read_requests(stream: IO[str]) -> list[Any]:
    """One request per line: a URL, or a JSON object ``{"url", "method", "headers", "body"}``;
    blank lines and ``#`` comments are skipped."""
    items: list[Any] = []
    for number, line in enumerate(stream, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("{"):
            try:
                items.append(json.loads(text))
            except ValueError as exc:
                raise InvalidInput(f"line {number}: not a JSON object: {exc}") from None
        else:
            items.append(text)
    return items


def batch_wait(settings: Settings, count: int, timeout: float | None) -> float:
    """How long ``lewis http`` waits by default for ``count`` URLs of ``timeout`` s each: the
    batch's worst case (:func:`~lewis_tasks.producer.http.batch_worst_case`)."""
    from ..producer.http import batch_worst_case

    return batch_worst_case(settings, count, timeout)


def loadtest_wait(settings: Settings, duration: float | None) -> float:
    """How long ``lewis loadtest`` waits by default: the run's worst case
    (:func:`~lewis_tasks.producer.http.loadtest_worst_case`)."""
    from ..producer.http import loadtest_worst_case

    return loadtest_worst_case(settings, duration)


def _finish(
    handle: JobHandle[P, R],
    line: Callable[[P], str],
    seconds: float,
    on_interrupt: Callable[[], R] | None = None,
) -> R:
    """The handle's result, with the live line meanwhile on a terminal; after ``seconds`` a
    TransientError saying what is missing (one line and exit 3 on the command line)."""
    from ..producer.handle import WaitTimeout
    from .follow import follow

    try:
        return follow(
            handle, seconds, line if sys.stdout.isatty() else None, on_interrupt=on_interrupt
        )
    except WaitTimeout:
        pass
    try:
        begun = handle.started()
    except Exception:  # the progress store is down too: say what we know, the wait ran out
        begun = False
    what = handle.what.removeprefix("HTTP ")
    if begun:
        raise TransientError(
            f"the {what} did not finish within {seconds:g} s (it may still "
            "be running: raise --wait, or see `lewis status`)"
        )
    raise TransientError(
        f"no io worker answered within {seconds:g} s; is the stack up? (`lewis status`)"
    )


@cli.command("http")
@click.argument("urls", nargs=-1)
@click.option(
    "-f",
    "--file",
    "source",
    type=click.File("r"),
    help="Read requests from FILE ('-': stdin): a URL or a JSON object per line.",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=None,
    help="Each URL's budget, all hops and retries (default: http.timeout).",
)
@click.option(
    "--limit",
    default=200,
    show_default=True,
    help="Rows in the table (failed rows first when there are more).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary and every URL as JSON.")
@click.option(
    "--wait",
    "wait_s",
    type=DURATION,
    default=None,
    help="Give up waiting after this long, exit 3 (default: the batch's worst case, "
    "from its size and the timeout).",
)
def http_command(
    urls: tuple[str, ...],
    source: IO[str] | None,
    timeout: float | None,
    limit: int,
    as_json: bool,
    wait_s: float | None,
) -> None:
    """Fetch URLs on the io workers: status, time, bytes and SHA-256 of each, or why not.
    Exits 1 when some URL failed (refused, timed out, out of scope…), 3 when no result
    came within --wait. `lewis http cancel BATCH_ID` stops a running batch."""
    from ..producer.http import submit_http_batch

    if len(urls) == 2 and urls[0] == "cancel" and source is None:  # not a URL: no scheme
        _cancel_batch(urls[1])
        return
    requests: list[Any] = list(urls)
    if source is not None:
        requests += read_requests(source)
    if not requests:
        raise InvalidInput("give URLs, or -f FILE with one per line")
    _check_wait(wait_s)
    began = time.monotonic()
    handle = submit_http_batch(requests, timeout=timeout)

    def line(p: HttpBatchProgress) -> str:
        rate = p.done / max(1e-9, time.monotonic() - began)
        return (
            f"{p.done:,}/{p.total:,} URLs · {p.ok:,} answered · "
            f"{p.failed:,} failed · {rate:,.0f} URLs/s"
        )

    summary = _finish(handle, line, wait_s or handle.worst_case or 0.0)
    seconds = time.monotonic() - began
    if as_json:
        rows = _all_rows(handle)
        click.echo(
            json.dumps(
                {
                    "batch_id": handle.id,
                    "seconds": round(seconds, 3),
                    "summary": summary.to_dict(),
                    "results": rows,
                },
                indent=1,
            )
        )
    else:
        if summary["total"] <= limit:
            rows = handle.result(limit=limit)
        else:
            rows = handle.result(limit=limit, failed_only=True)
        click.echo(format_batch(summary.to_dict(), rows, seconds))
    if summary.failed:
        sys.exit(int(Exit.FAILURE))


def _cancel_batch(batch_id: str) -> None:
    """Stop a running batch (queued chunks dropped, running ones end within a fraction of a
    second and keep their rows); exit 1 in one line if it had ended."""
    from ..producer.http import HttpBatchHandle, cancel_http_batch

    if cancel_http_batch(batch_id):
        click.echo(f"HTTP batch {batch_id} cancelled")
        return
    status = HttpBatchHandle(batch_id, "", [], None).progress().status
    if status == "cancelled":
        click.echo(f"HTTP batch {batch_id} was cancelled already")
        return
    click.echo(f"lewis: HTTP batch {batch_id} has ended ({status}): nothing to cancel", err=True)
    sys.exit(int(Exit.FAILURE))


def _all_rows(handle: Any, page: int = 1000) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        chunk = handle.result(offset=len(rows), limit=page)
        rows += chunk
        if len(chunk) < page:
            return rows


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counter.items()) or "none"


def format_batch(summary: dict[str, Any], rows: Iterable[dict[str, Any]], seconds: float) -> str:
    """The final table of ``lewis http``: one line per URL, then the totals."""
    lines = [f"{'#':>5}  {'status':>6}  {'time ms':>9}  {'bytes':>9}  {'sha256':<12}  url / error"]
    shown = 0
    for row in rows:
        shown += 1
        total_ms = (row.get("timings") or {}).get("total_ms")
        status = str(row["status"]) if row["status"] is not None else "-"
        detail = row["url"]
        if row.get("error_class"):
            detail += f"  [{row['error_class']}] {row.get('error') or ''}"
        elif row.get("redirects"):
            detail += f"  → {row.get('final_url')} ({len(row['redirects'])} redirects)"
        if row.get("truncated"):
            detail += "  (body truncated)"
        lines.append(
            f"{row['index']:>5}  {status:>6}  "
            f"{'-' if total_ms is None else f'{total_ms:,.1f}':>9}  "
            f"{row.get('bytes') or 0:>9,}  {(row.get('sha256') or '-')[:12]:<12}  {detail}"
        )
    if shown < summary["total"]:
        lines.append(
            f"  … the failed URLs only, {summary['total'] - shown:,} more (--json shows every URL)"
        )
    lat = summary.get("latency_ms") or {}
    lines += [
        "",
        f"{summary['total']:,} URLs in {seconds:.2f} s ({summary['total'] / max(seconds, 1e-9):,.0f} URLs/s): "
        f"{summary['ok']:,} answered ({_counts(summary['statuses'])}), "
        f"{summary['failed']:,} failed ({_counts(summary['errors'])})",
        f"time per answered URL: p50 {lat.get('p50_ms', 0):,.1f} ms · p99 {lat.get('p99_ms', 0):,.1f} ms"
        f" · max {lat.get('max_ms', 0):,.1f} ms · {summary['chunks']} chunks on "
        f"{len(summary['processes'])} process(es)",
    ]
    return "\n".join(lines)


@cli.command("loadtest")
@click.argument("target", nargs=-1, required=True, metavar="URL | cancel RUN_ID")
@click.option(
    "-c",
    "--concurrency",
    type=int,
    default=10,
    show_default=True,
    help="Connections in flight, in total over the workers.",
)
@click.option(
    "-d",
    "--duration",
    type=DURATION,
    default=None,
    help="How long, like 10s, 1m, 500ms (default 10s unless --requests).",
)
@click.option(
    "-n",
    "--requests",
    "count",
    type=int,
    default=None,
    help="Stop after this many requests (in total).",
)
@click.option(
    "-R",
    "--rate",
    type=float,
    default=None,
    help="Open loop: requests per second in total, latency from the intended send time.",
)
@click.option(
    "-w",
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="io worker processes to spread the load over (they start together).",
)
@click.option(
    "-m",
    "--method",
    default="GET",
    show_default=True,
    help="GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.",
)
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A header sent with every request (repeatable). Authorization, Cookie and "
    "the like are stored masked.",
)
@click.option("--body", default=None, help="The request body, as text (POST, PUT, PATCH, DELETE).")
@click.option(
    "--body-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Read the request body from this file (UTF-8 text).",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=None,
    help="Cut each request after this long; it counts as a 'timeout' error.",
)
@click.option(
    "--ramp",
    type=DURATION,
    default=None,
    help="Raise the load linearly to its target over this long: connections one "
    "after another, or the rate from 0 with --rate.",
)
@click.option(
    "--csv",
    "csv_prefix",
    default=None,
    metavar="PREFIX",
    help="Also write locust-style PREFIX_stats.csv and PREFIX_stats_history.csv.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the merged result as JSON.")
@click.option(
    "--wait",
    "wait_s",
    type=DURATION,
    default=None,
    help="Give up waiting after this long, exit 3 (default: the start barrier, the "
    "run and its drain, plus a margin). Parts that could no longer finish "
    "within it expire unstarted.",
)
def loadtest_command(
    target: tuple[str, ...],
    concurrency: int,
    duration: float | None,
    count: int | None,
    rate: float | None,
    workers: int,
    method: str,
    headers: tuple[str, ...],
    body: str | None,
    body_file: str | None,
    timeout: float | None,
    ramp: float | None,
    csv_prefix: str | None,
    as_json: bool,
    wait_s: float | None,
) -> None:
    """Load-test URL from the io workers: requests/s, latency percentiles, status codes.
    Exits 1 when no request was answered, 3 when no result came within --wait. Ctrl-C stops
    the load test and prints what it measured until then (exit 130); `lewis loadtest cancel
    RUN_ID` stops one from anywhere."""
    from ..infra.config import get_settings
    from ..infra.planning import loadtest_budget
    from ..producer.http import submit_loadtest

    if len(target) == 2 and target[0] == "cancel":  # not a URL: no scheme
        _cancel_loadtest(target[1])
        return
    if len(target) != 1:
        raise click.UsageError("give one URL (or: lewis loadtest cancel RUN_ID)")
    url = target[0]

    if duration is None and count is None:
        duration = 10.0
    _check_wait(wait_s)
    pairs = [parse_header(text) for text in headers]
    body = _read_body(body, body_file)
    settings = get_settings()
    if wait_s is None:
        wait_s = loadtest_wait(settings, duration)
    # parts that have not started while a run could still end within --wait expire unrun:
    # giving up waiting must not leave a load test queued to hit its target later
    start_within = max(
        settings.loadtest.barrier_timeout,
        wait_s - loadtest_budget(settings).time_limits(duration)[1],
    )
    handle = submit_loadtest(
        url,
        concurrency=concurrency,
        duration=duration,
        requests=count,
        rate=rate,
        workers=workers,
        method=method,
        headers=pairs,
        body=body,
        timeout=timeout,
        ramp=ramp,
        start_within=start_within,
    )

    def line(p: LoadtestProgress) -> str:
        if not p.reporting:
            return f"waiting for {p.parts} part(s) to start together…"
        return (
            f"{p.elapsed_s:.1f} s · {p.requests:,} requests · {p.rps:,.0f} req/s · "
            f"{p.errors:,} errors · {p.reporting}/{p.parts} parts"
        )

    interrupted = False

    def stop_and_collect() -> LoadtestResult:
        # as wrk and locust: Ctrl-C ends the run and shows what it measured
        nonlocal interrupted
        interrupted = True
        cancel_or_leave(f"load test {handle.id}", handle.cancel)
        return handle.wait(timeout=COLLECT_AFTER_CANCEL)

    result = _finish(handle, line, wait_s, on_interrupt=stop_and_collect)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        click.echo(format_loadtest(result.to_dict()))
    if csv_prefix is not None:
        from ..domain.loadcsv import write_csv

        paths = write_csv(result.to_dict(), csv_prefix)
        click.echo(f"wrote {paths[0]} and {paths[1]}", err=True)
    if interrupted:
        sys.exit(int(Exit.INTERRUPTED))
    if result.requests == 0:
        sys.exit(int(Exit.FAILURE))


def _cancel_loadtest(run_id: str) -> None:
    """Stop a running load test (its parts end within ~0.1 s, the merged result keeps what
    they measured); exit 1 in one line if it had ended."""
    from ..producer.http import cancel_loadtest

    if cancel_loadtest(run_id):
        click.echo(f"load test {run_id} cancelled")
        return
    click.echo(
        f"lewis: load test {run_id} has ended or was cancelled already: nothing to cancel", err=True
    )
    sys.exit(int(Exit.FAILURE))


def parse_header(text: str) -> tuple[str, str]:
    """``("Name", "value")`` from ``-H 'Name: value'`` (curl's and wrk's form); InvalidInput
    if there is no colon (the name and value are checked with the run)."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise InvalidInput(f"-H {text!r}: a header is 'Name: value'")
    return name.strip(), value.strip(" \t")


def _read_body(body: str | None, path: str | None) -> str | None:
    """The body from --body or --body-file (not both); InvalidInput if it is not UTF-8."""
    if path is None:
        return body
    if body is not None:
        raise InvalidInput("give --body or --body-file, not both")
    try:
        with open(path, "rb") as stream:
            return stream.read().decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"--body-file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"--body-file {path}: {exc.strerror}") from None


def _check_wait(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInput(f"--wait must be a duration > 0, not {seconds:g}")


def format_loadtest(result: dict[str, Any]) -> str:
    """The final table of ``lewis loadtest``."""
    lat = result["latency_ms"]
    mode = (
        "closed loop" if result["mode"] == "closed" else f"open loop at {result['rate']:,.0f} req/s"
    )
    processes = len(result.get("processes") or [])
    # an open loop's latency from each actual send (a closed loop's is the latency row itself)
    service = (
        [
            (
                "service ms",
                _percentiles(result["service_ms"], ("p50", "p99", "max"))
                + "  (from the actual send)",
            )
        ]
        if result["mode"] == "open" and "service_ms" in result
        else []
    )
    rows = [
        ("url", f"{result['method']} {result['url']}"),
        (
            "load",
            f"{mode}, {result['concurrency']} connections, {result['parts']} part(s) on "
            f"{processes} process(es){' (shared!)' if result.get('shared_process') else ''}"
            + (f", ramp {result['ramp_s']:g} s" if result.get("ramp_s") else ""),
        ),
        (
            "requests",
            f"{result['requests']:,} in {result['duration_s']:.2f} s"
            + (
                f" (+{result['warmup']:,} uncounted, opening the connections first)"
                if result.get("warmup")
                else ""
            )
            + (
                " — cancelled: the figures cover the time it ran" if result.get("cancelled") else ""
            ),
        ),
        ("rps", f"{result['rps']:,.1f}"),
        ("latency ms", _percentiles(lat, ("p50", "p90", "p95", "p99", "p99.9", "max"))),
        *service,
        ("bytes", f"{result['bytes']:,}"),
        ("status", _counts(result["status_counts"])),
        ("errors", _counts(result["errors"])),
    ]
    return "\n".join(f"{name:<11} {value}" for name, value in rows)


def _percentiles(summary: dict[str, Any], names: Iterable[str]) -> str:
    """``p50 0.42  p99 1.30 …`` from a histogram summary (its ``<name>_ms`` keys)."""
    return "  ".join(f"{name} {summary[f'{name}_ms']:,.2f}" for name in names)


__all__ = [
    "http_command",
    "loadtest_command",
    "parse_duration",
    "parse_header",
    "read_requests",
    "format_batch",
    "format_loadtest",
    "batch_wait",
    "loadtest_wait",
]
