"""The figures of a job's pieces and their sums: an HTTP batch's chunks, a load test's parts.

Pure: what the chunk and part tasks return, and what their merges add up (histograms merged
bucket by bucket, never percentiles averaged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .histogram import LatencyHistogram
from .httpfetch import HttpOutcome, summarise
from .loadgen import LoadResult


def chunk_figures(outcomes: Sequence[HttpOutcome]) -> dict[str, Any]:
    """A fetched chunk's counts, bytes and latency histogram (of the URLs that succeeded)."""
    latency = LatencyHistogram()
    for outcome in outcomes:
        if outcome.ok:
            latency.record(int(outcome.timings.total_ms * 1000))
    return {
        "count": len(outcomes),
        "summary": summarise(outcomes),
        "bytes": sum(o.bytes for o in outcomes),
        "latency": latency.to_dict(),
    }


def sum_chunks(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The chunks' statuses, errors, bytes and latency summed (the batch's own counters —
    total, done, ok, failed — are the database's)."""
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    latency = LatencyHistogram()
    for chunk in sorted(results, key=lambda r: int(r.get("start", 0))):
        for key, n in chunk["summary"]["statuses"].items():
            statuses[key] = statuses.get(key, 0) + int(n)
        for key, n in chunk["summary"]["errors"].items():
            errors[key] = errors.get(key, 0) + int(n)
        latency.merge(LatencyHistogram.from_dict(chunk["latency"]))
    return {
        "statuses": dict(sorted(statuses.items())),
        "errors": dict(sorted(errors.items())),
        "bytes": sum(int(r.get("bytes", 0)) for r in results),
        "latency_ms": latency.summary(),
        "chunks": len(results),
        "processes": sorted({str(r.get("process")) for r in results}),
        "slowest_chunk_s": max((float(r.get("seconds", 0)) for r in results), default=0.0),
    }


def sum_parts(results: Sequence[Mapping[str, Any]], run_id: str) -> dict[str, Any]:
    """A load test's parts as one result, with each part's own figures listed."""
    parts = sorted(results, key=lambda r: int(r.get("part", 0)))
    merged = LoadResult.merge(LoadResult.from_dict(p) for p in parts)
    processes = sorted({str(p.get("process")) for p in parts})
    return {
        **merged.to_dict(),
        "run_id": run_id,
        "processes": processes,
        "shared_process": len(processes) < len(parts),
        "handed_back": sum(int(p.get("handed_back", 0)) for p in parts),
        "by_part": [
            {
                "part": p.get("part"),
                "process": p.get("process"),
                "requests": p["requests"],
                "rps": p["rps"],
                "p50_ms": p["latency_ms"]["p50_ms"],
                "p99_ms": p["latency_ms"]["p99_ms"],
            }
            for p in parts
        ],
    }


__all__ = ["chunk_figures", "sum_chunks", "sum_parts"]
