"""Reports people look at rather than read: benchmark history as HTML and PNG charts.

The charts need matplotlib (the ``report`` extra); ``runs`` (storing and loading benchmark
runs, which workers use) does not, so nothing here imports it until a report is drawn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReportFiles", "render_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import bench_report

        return getattr(bench_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
