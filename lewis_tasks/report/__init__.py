"""Reports people look at rather than read: benchmark history as HTML and PNG charts."""

from .bench_report import ReportFiles, render_report

__all__ = ["ReportFiles", "render_report"]
