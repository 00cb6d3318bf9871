"""The producer API: submit work, get handles to wait on, watch and read it.

Loaded lazily, name by name, so importing one area never pulls in another.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # any task; any job of many tasks
    "TaskHandle": "base",
    "JobHandle": "handle",
    "WaitTimeout": "handle",
    "submit": "base",
    "submit_many": "base",
    "wait_all": "base",
    # scans
    "submit_scan": "scan",
    "ScanHandle": "scan",
    "ScanReport": "scan",
    # HTTP batches and load tests
    "submit_http_batch": "http",
    "HttpBatchHandle": "http",
    "submit_loadtest": "http",
    "LoadtestHandle": "http",
    # profiling, diagnostics, benchmarks
    "submit_profile": "profile",
    "ProfileHandle": "profile",
    "submit_diagnose": "profile",
    "DiagnoseHandle": "profile",
    "submit_benchmark": "profile",
    "BenchmarkHandle": "profile",
    "benchmark_cluster": "clusterbench",
    "ClusterBenchmark": "clusterbench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
