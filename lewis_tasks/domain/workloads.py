"""CPU-bound workloads shaped like the platform's own merge and match steps, to profile and benchmark.

Each one builds deterministic synthetic input (seeded), then runs the real domain code on it:
the merge of a distributed load test's latency histograms (parts arrive as JSON), the merge of
a scan's chunk results into one open-port set, CVE matching of identified services against the
bundled NVD sample, and a plain Python loop. They are what ``lewis profile`` and ``lewis bench``
may run besides the no-op tasks: registered by name, with sizes capped here so a request cannot
turn a worker into a memory hog.
"""

from __future__ import annotations

import random
from typing import Any

from ..errors import InvalidInput
from .histogram import LatencyHistogram
from .targets import format_ports
from .vulns import PRODUCT_CPES, find_cves, sample_records

MAX_PARTS = 1_000
MAX_VALUES = 200_000  # per part
MAX_CHUNKS = 1_000
MAX_PORTS_PER_CHUNK = 65_535
MAX_SERVICES = 100_000
MAX_LOOP = 50_000_000


def _count(what: str, value: Any, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise InvalidInput(f"{what} must be a whole number in 1..{cap}, got {value!r}")
    return value


def merge_histograms(
    parts: int = 16, values_per_part: int = 2_000, seed: int = 7
) -> dict[str, Any]:
    """Record ``parts`` latency histograms, ship each as JSON data, merge them: the summary.

    The shape of a distributed load test's final step (one histogram per load-test part).
    """
    parts = _count("parts", parts, MAX_PARTS)
    values_per_part = _count("values_per_part", values_per_part, MAX_VALUES)
    rng = random.Random(seed)
    # drawn from a small table in one C call, so the profile shows recording, not sampling
    table = [int(rng.lognormvariate(7.5, 0.6)) for _ in range(1024)]  # ~1.8 ms median, long tail
    shipped = []
    for _ in range(parts):
        part = LatencyHistogram()
        for value in rng.choices(table, k=values_per_part):
            part.record(value)
        shipped.append(part.to_dict())
    merged = LatencyHistogram.merged(LatencyHistogram.from_dict(d) for d in shipped)
    return merged.summary()


def merge_scan_chunks(
    chunks: int = 64, ports_per_chunk: int = 4_096, open_share: float = 0.05, seed: int = 7
) -> dict[str, Any]:
    """Merge ``chunks`` synthetic chunk results (as JSON data) into one scan's port states.

    The shape of a scan's chord callback: union the open and filtered ports of every chunk per
    host, count the closed ones, and write each host's open set as a compact port spec.
    """
    chunks = _count("chunks", chunks, MAX_CHUNKS)
    ports_per_chunk = _count("ports_per_chunk", ports_per_chunk, MAX_PORTS_PER_CHUNK)
    if (
        isinstance(open_share, bool)
        or not isinstance(open_share, int | float)
        or not 0 <= open_share <= 1
    ):
        raise InvalidInput(f"open_share must be a number in 0..1, got {open_share!r}")
    rng = random.Random(seed)
    opened = round(ports_per_chunk * open_share)
    filtered = round(ports_per_chunk * open_share / 4)
    results: list[dict[str, Any]] = []
    for index in range(chunks):
        start = (index * ports_per_chunk) % 65_535  # chunks tile 1..65535, wrapping round
        picked = [
            p % 65_535 + 1
            for p in rng.sample(
                range(start, start + ports_per_chunk), min(opened + filtered, ports_per_chunk)
            )
        ]
        results.append(
            {
                "address": f"127.0.0.{1 + index % 8}",
                "ports_total": ports_per_chunk,
                "open": picked[:opened],
                "filtered": picked[opened:],
                "closed_count": ports_per_chunk - len(picked),
            }
        )
    by_host: dict[str, dict[str, set[int]]] = {}
    closed = 0
    for result in results:
        host = by_host.setdefault(str(result["address"]), {"open": set(), "filtered": set()})
        host["open"].update(result["open"])
        host["filtered"].update(result["filtered"])
        closed += int(result["closed_count"])
    return {
        "hosts": len(by_host),
        "ports_total": sum(int(r["ports_total"]) for r in results),
        "closed": closed,
        "open": {addr: format_ports(h["open"]) for addr, h in sorted(by_host.items())},
        "open_count": sum(len(h["open"]) for h in by_host.values()),
        "filtered_count": sum(len(h["filtered"]) for h in by_host.values()),
    }


_VERSIONS = (
    "2.4.49",
    "2.4.50",
    "7.4",
    "8.9p1",
    "9.6p1",
    "5.0.7",
    "6.2.6",
    "7.0.11",
    "1.4.28",
    "2.3.4",
    "1.3.5",
    "4.92",
    "4.96",
    "5.6.1",
    "8.0.30",
    "13.4",
    "15.2",
)


def match_services(services: int = 500, seed: int = 7) -> dict[str, Any]:
    """Match ``services`` synthetic (product, version) identifications against the NVD sample.

    The shape of a scan report's vulnerability step: version-range matching over CPE ranges.
    """
    services = _count("services", services, MAX_SERVICES)
    records = sample_records()
    products = sorted(PRODUCT_CPES)
    rng = random.Random(seed)
    matched: dict[str, int] = {}
    hits = 0
    for _ in range(services):
        found = find_cves(rng.choice(products), rng.choice(_VERSIONS), records)
        hits += bool(found)
        for record in found:
            matched[record.cve_id] = matched.get(record.cve_id, 0) + 1
    return {"services": services, "with_cves": hits, "cves": dict(sorted(matched.items()))}


def spin(loops: int = 200_000) -> int:
    """A plain Python arithmetic loop: pure interpreter time, no allocation worth naming."""
    loops = _count("loops", loops, MAX_LOOP)
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


__all__ = [
    "MAX_CHUNKS",
    "MAX_LOOP",
    "MAX_PARTS",
    "MAX_PORTS_PER_CHUNK",
    "MAX_SERVICES",
    "MAX_VALUES",
    "match_services",
    "merge_histograms",
    "merge_scan_chunks",
    "spin",
]
