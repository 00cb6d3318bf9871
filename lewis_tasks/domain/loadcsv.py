"""A load test's result as locust's CSV files: ``PREFIX_stats.csv`` and ``PREFIX_stats_history.csv``.

The columns are locust's own names (``--csv``), so the tools that read locust's files read
these. ``_stats.csv`` has one row for the endpoint and locust's ``Aggregated`` row (the same
figures: a run loads one endpoint); ``_stats_history.csv`` one ``Aggregated`` row per second
of the run. Counting as locust does: ``Request Count`` is every request that ended (answered
or not), ``Failure Count`` those without an answer plus answers with a status ≥ 400;
response times in milliseconds, of the answered requests; content size per request ended. History columns whose figure a run
does not keep per second (the per-second percentiles, the running response times) are left
out rather than filled with guesses. Pure: a result dict in, rows out.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .histogram import LatencyHistogram

CSV_PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)
STATS_COLUMNS = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    *(f"{p:g}%" for p in CSV_PERCENTILES),
)
HISTORY_COLUMNS = (
    "Timestamp",
    "User Count",
    "Type",
    "Name",
    "Requests/s",
    "Failures/s",
    "Total Request Count",
    "Total Failure Count",
    "Total Average Content Size",
)


def failures(result: Mapping[str, Any]) -> int:
    """Requests without an answer plus answers with a status ≥ 400."""
    bad = sum(
        int(n)
        for status, n in result["status_counts"].items()
        if str(status).isdigit() and int(status) >= 400
    )
    return sum(int(n) for n in result["errors"].values()) + bad


def stats_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """The endpoint's row and the ``Aggregated`` row."""
    latency = LatencyHistogram.from_dict(result["histogram"])
    total = int(result["requests"]) + sum(int(n) for n in result["errors"].values())
    failed = failures(result)
    seconds = float(result["duration_s"]) or 1.0
    figures = [
        total,
        failed,
        _ms(latency.percentile(50)),
        round(latency.mean / 1000, 3),
        _ms(latency.min),
        _ms(latency.max),
        round(int(result["bytes"]) / total, 1) if total else 0,
        round(total / seconds, 3),
        round(failed / seconds, 3),
        *(_ms(latency.percentile(p)) for p in CSV_PERCENTILES),
    ]
    return [[result["method"], result["url"], *figures], ["", "Aggregated", *figures]]


def history_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """One ``Aggregated`` row per second of the run, its timestamp the second's end."""
    start = int(float(result["started_at"]))
    rows: list[list[Any]] = []
    total = failed = size = 0
    for second, (ended, bad, received) in enumerate(result.get("timeline") or ()):
        total, failed, size = total + ended, failed + bad, size + received
        rows.append(
            [
                start + second + 1,
                users_at(result, second + 1),
                "",
                "Aggregated",
                ended,
                bad,
                total,
                failed,
                round(size / total, 1) if total else 0,
            ]
        )
    return rows


def users_at(result: Mapping[str, Any], t: float) -> int:
    """Connections running ``t`` s into the run: a closed loop's ramp starts connection
    ``i`` of ``c`` at ``ramp·i/c``; without a ramp (or in an open loop) all of them."""
    concurrency, ramp = int(result["concurrency"]), result.get("ramp_s")
    if not ramp or result.get("mode") == "open":
        return concurrency
    return min(concurrency, int(concurrency * t / float(ramp)) + 1)


def write_csv(result: Mapping[str, Any], prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX_stats.csv`` and ``PREFIX_stats_history.csv``; their paths."""
    stats, history = Path(f"{prefix}_stats.csv"), Path(f"{prefix}_stats_history.csv")
    with stats.open("w", newline="") as stream:
        _write(stream, STATS_COLUMNS, stats_rows(result))
    with history.open("w", newline="") as stream:
        _write(stream, HISTORY_COLUMNS, history_rows(result))
    return stats, history


def _write(stream: IO[str], columns: tuple[str, ...], rows: list[list[Any]]) -> None:
    writer = csv.writer(stream)
    writer.writerow(columns)
    writer.writerows(rows)


def _ms(us: int | float) -> float:
    return round(us / 1000, 3)


__all__ = [
    "write_csv",
    "stats_rows",
    "history_rows",
    "failures",
    "STATS_COLUMNS",
    "HISTORY_COLUMNS",
    "CSV_PERCENTILES",
]
