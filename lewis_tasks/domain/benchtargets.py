"""What ``lewis profile`` and ``lewis bench`` may run in a worker, by name: nothing else.

A profile or benchmark request names an entry here; any other name is refused (InvalidInput
listing these), so a message can never make a worker import and run an arbitrary dotted path.
Entries are the project's own tasks that are safe to run inline (the ``lewis.bench`` no-ops
and ``io_sleep``, looked up by the worker's task module) and the CPU-bound workloads of
:mod:`lewis_tasks.domain.workloads`, shaped like the platform's merge and match steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import workloads

# tasks a profile or benchmark may run inline, by task name
TASK_TARGETS = ("lewis.bench.noop", "lewis.bench.io_noop", "lewis.bench.io_sleep")

WORKLOAD_TARGETS: Mapping[str, Callable[..., Any]] = {
    "workload.merge_histograms": workloads.merge_histograms,
    "workload.merge_scan_chunks": workloads.merge_scan_chunks,
    "workload.match_services": workloads.match_services,
    "workload.spin": workloads.spin,
}

# Arguments used when a request gives none (io_sleep needs its seconds).
DEFAULT_ARGS: Mapping[str, list[Any]] = {"lewis.bench.io_sleep": [0.01]}


def target_names() -> list[str]:
    """Every built-in target's name, sorted (as the registries list them)."""
    return sorted([*TASK_TARGETS, *WORKLOAD_TARGETS])


def default_args(name: str) -> list[Any]:
    """The positional arguments ``name`` runs with when the request gives none."""
    return list(DEFAULT_ARGS.get(name, []))


__all__ = ["TASK_TARGETS", "WORKLOAD_TARGETS", "DEFAULT_ARGS", "target_names", "default_args"]
