"""Capacity sizing from measured costs (``lewis size``), in place of the guide's PerformanceSizer.

The guide multiplied a fixed base by made-up factors (0.1 core per scan an hour, 0.5 GB per
user). Here the work is turned into worker-seconds with the rates this stack measured
(``lewis bench run``: scan ports/s, HTTP requests/s and no-op tasks/s per queue), then into
workers at a target utilisation, then into cores, memory and storage. Every step is kept as a
line of the derivation, so the answer can be checked by hand. Pure: the caller brings the
measured costs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

UTILISATION = 0.7  # plan workers to be busy 70 % of the time: room for bursts and retries
NETWORK_HEADROOM = 2.0  # the guide's network-intensive factor, applied to io workers
PEAK_SECONDS = 60.0  # a burst of concurrent users' scans should finish within this


@dataclass(frozen=True)
class Workload:
    """The guide's inputs, plus the job mix."""

    scans_per_hour: float
    concurrent_users: int
    retention_days: float
    network_intensive: bool = False
    ports_per_scan: int = 1000
    http_requests_per_hour: float = 0.0
    open_port_ratio: float = 0.01  # the share of probed ports found open (rows stored)


@dataclass(frozen=True)
class Costs:
    """What one process of the stack does per second, from the latest benchmark runs."""

    scan_ports_per_s: float  # per io process
    http_requests_per_s: float  # per io process
    io_tasks_per_s: float  # per io process, no-ops: the task system's own cost
    cpu_tasks_per_s: float  # per cpu process
    process_rss_bytes: float = 150e6  # resident memory of a worker process
    sources: dict[str, str] = field(default_factory=dict)  # figure -> the run it came from


@dataclass(frozen=True)
class Sizing:
    cores: int
    memory_gb: float
    storage_gb: float
    workers: dict[str, int]
    derivation: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "derivation": list(self.derivation)}


SCAN_ROW_BYTES = 2048  # a scan's row and summary
PORT_ROW_BYTES = 200  # one open port with its service and banner
HTTP_ROW_BYTES = 600  # one fetched URL's result row
CHUNK_PORTS = 8192  # scan.chunk_ports: one io task per chunk, one cpu merge per scan


def size(work: Workload, costs: Costs) -> Sizing:
    """Cores, memory, storage and workers per queue for ``work`` at ``costs``."""
    for name in ("scan_ports_per_s", "http_requests_per_s", "io_tasks_per_s", "cpu_tasks_per_s"):
        if not getattr(costs, name) > 0:
            raise ValueError(f"cost {name} must be > 0 (run `lewis bench run` first)")
    steps: list[str] = []
    ports_h = work.scans_per_hour * work.ports_per_scan
    tasks_h = work.scans_per_hour * math.ceil(work.ports_per_scan / CHUNK_PORTS)
    io_s = (
        ports_h / costs.scan_ports_per_s
        + work.http_requests_per_hour / costs.http_requests_per_s
        + tasks_h / costs.io_tasks_per_s
    )
    steps.append(
        f"io: {ports_h:,.0f} ports/h / {costs.scan_ports_per_s:,.0f} ports/s + "
        f"{work.http_requests_per_hour:,.0f} requests/h / "
        f"{costs.http_requests_per_s:,.0f} req/s + {tasks_h:,.0f} chunk tasks/h / "
        f"{costs.io_tasks_per_s:,.0f} tasks/s = {io_s:,.1f} worker-s/h"
    )
    steady = io_s / 3600 / UTILISATION
    peak = work.concurrent_users * work.ports_per_scan / costs.scan_ports_per_s / PEAK_SECONDS
    io = max(
        1, math.ceil(max(steady, peak) * (NETWORK_HEADROOM if work.network_intensive else 1.0))
    )
    steps.append(
        f"io workers: max(steady {io_s:,.1f}/3600/{UTILISATION:g} = {steady:.2f}, "
        f"peak {work.concurrent_users} users x {work.ports_per_scan} ports within "
        f"{PEAK_SECONDS:g}s = {peak:.2f})"
        + (f" x {NETWORK_HEADROOM:g} (network intensive)" if work.network_intensive else "")
        + f" -> {io}"
    )
    cpu_s = work.scans_per_hour / costs.cpu_tasks_per_s
    cpu = max(1, math.ceil(cpu_s / 3600 / UTILISATION))
    steps.append(
        f"cpu workers: {work.scans_per_hour:,.0f} merges/h / "
        f"{costs.cpu_tasks_per_s:,.0f} tasks/s = {cpu_s:,.2f} worker-s/h -> {cpu}"
    )
    workers = {"io": io, "cpu": cpu, "control": 1}
    processes = io + cpu + 1
    cores = processes + 1  # + Redis, beat and the monitor
    steps.append(
        f"cores: one per worker process ({processes}) + 1 for Redis, beat, monitor = {cores}"
    )
    memory = (processes * costs.process_rss_bytes + 0.5e9) / 1e9
    steps.append(
        f"memory: {processes} processes x {costs.process_rss_bytes / 1e6:,.0f} MB + "
        f"0.5 GB (Redis, beat, monitor) = {memory:.1f} GB"
    )
    per_scan = SCAN_ROW_BYTES + work.ports_per_scan * work.open_port_ratio * PORT_ROW_BYTES
    per_day = 24 * (work.scans_per_hour * per_scan + work.http_requests_per_hour * HTTP_ROW_BYTES)
    storage = per_day * work.retention_days / 1e9 * 1.5  # indexes and free pages
    steps.append(
        f"storage: ({work.scans_per_hour:g} scans x {per_scan:,.0f} B + "
        f"{work.http_requests_per_hour:g} URLs x {HTTP_ROW_BYTES} B) x 24 h x "
        f"{work.retention_days:g} days x 1.5 (indexes) = {storage:.2f} GB"
    )
    steps += [f"cost {k}: {v}" for k, v in sorted(costs.sources.items())]
    return Sizing(cores, round(memory, 1), round(storage, 2), workers, tuple(steps))


def costs_from_runs(runs: list[dict[str, Any]], process_rss_bytes: float | None = None) -> Costs:
    """Per-process rates from stored cluster runs (``lewis bench run``), the newest of each
    figure; a rate measured with N workers on the queue is divided by N."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: str(r.get("created_at"))):
        if run.get("suite") == "cluster" and (run.get("metrics") or {}).get("throughput_per_s"):
            newest[(str(run.get("name")), str(run.get("queue")))] = run
    wanted = {
        "scan_ports_per_s": ("scan", "io"),
        "http_requests_per_s": ("http", "io"),
        "io_tasks_per_s": ("noop", "io"),
        "cpu_tasks_per_s": ("noop", "cpu"),
    }
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for cost, key in wanted.items():
        found = newest.get(key)
        if found is None:
            raise ValueError(f"no stored {key[0]} run on {key[1]}: run `lewis bench run` first")
        consumers = ((found.get("settings") or {}).get("run") or {}).get("consumers") or {}
        n = max(1, int(consumers.get(key[1]) or 1))
        rate = float(found["metrics"]["throughput_per_s"]) / n
        values[cost] = rate
        sources[cost] = (
            f"{rate:,.1f}/s per process (run {str(found.get('id'))[:8]} of "
            f"{str(found.get('created_at'))[:19]}, {n} {key[1]} worker(s))"
        )
    if process_rss_bytes:
        sources["process_rss_bytes"] = f"{process_rss_bytes / 1e6:,.0f} MB (the workers' median)"
        return Costs(**values, process_rss_bytes=process_rss_bytes, sources=sources)
    sources["process_rss_bytes"] = "150 MB assumed (no worker reports in the metric store)"
    return Costs(**values, sources=sources)


__all__ = [
    "Workload",
    "Costs",
    "Sizing",
    "size",
    "costs_from_runs",
    "UTILISATION",
    "NETWORK_HEADROOM",
]
