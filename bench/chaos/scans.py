"""Scans as chaos load: real ``lewis.scan`` jobs against loopback listeners, counted by the
project's own idempotent store (scan rows keyed by scan id, port rows by scan, host, port).

A scan counts as completed when its report is ``done`` with exactly the open ports the kernel
lists; run more than once when a chunk was delivered again; harmless when its port rows and
findings are each stored once (as many as the open ports).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lewis_tasks.errors import LewisError

from .ledger import BackgroundLoad, Figures

ADDRESS = "127.88.5.1"
CLOSED = "1-40"  # closed ports beside the listeners: the chunk connects to them too


@contextlib.contextmanager
def scan_targets(count: int = 8) -> Iterator[Any]:
    """Listeners on ADDRESS, half of them silent (identification waits out the banner
    timeout: time for a kill to land mid-chunk)."""
    from tests.support.listeners import running_listeners

    with running_listeners(count, host=ADDRESS, seed=12, banner_share=0.5) as listeners:
        yield listeners


class ScanLoad(BackgroundLoad):
    """A thread submitting one scan of the listeners every ``every`` seconds until stopped."""

    def __init__(self, listeners: Any, every: float) -> None:
        from lewis_tasks.domain.targets import format_ports

        self.ports = f"{CLOSED},{format_ports(listeners.ports)}"
        self.every = every
        self.handles: list[Any] = []
        self.redelivered: set[str] = set()  # scan ids
        self.refused = 0
        super().__init__("scan-load")

    def _run(self) -> None:
        from lewis_tasks.producer.scan import submit_scan

        while not self._stop.is_set():
            try:
                self.handles.append(submit_scan(ADDRESS, ports=self.ports))
            except LewisError:
                self.refused += 1
            self.note_redeliveries(self.handles[-20:])
            self._stop.wait(self.every)

    def note_redeliveries(self, handles: list[Any]) -> None:
        """Remember scans with a chunk delivered again, while the counters live (LewisTask
        expires them after 4 × the visibility timeout)."""
        from sqlalchemy import select

        from lewis_tasks.infra.database import get_engine
        from lewis_tasks.infra.task import redeliveries
        from lewis_tasks.storage.db import session_scope
        from lewis_tasks.storage.models import ScanChunkRow

        ids = [h.id for h in handles if h.id not in self.redelivered]
        if not ids:
            return
        with contextlib.suppress(Exception):  # a broker or database hiccup: look next time
            with session_scope(get_engine()) as session:
                rows = session.execute(
                    select(ScanChunkRow.scan_id, ScanChunkRow.task_id).where(
                        ScanChunkRow.scan_id.in_(ids)
                    )
                ).all()
            self.redelivered |= {
                scan for scan, task in rows if task is not None and redeliveries(task) > 0
            }


def scan_figures(name: str, load: ScanLoad, patience: float) -> Figures:
    """Wait for every submitted scan (at most ``patience`` seconds in all), then check each
    against the kernel's listening set and the rows it stored."""
    import time

    from sqlalchemy import func, select

    from lewis_tasks.domain.targets import parse_ports
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.models import FindingRow, ScanPortRow
    from tests.support.listeners import listening_ports

    truth = sorted(listening_ports(ADDRESS) & set(parse_ports(load.ports)))
    figures = Figures(name, submitted=len(load.handles), refused=load.refused)
    deadline = time.monotonic() + patience
    for handle in load.handles:
        try:
            report = handle.wait(timeout=max(1.0, deadline - time.monotonic()))
        except Exception as exc:  # failed or still running: not completed
            figures.notes.append(f"scan {handle.id[:8]}: {type(exc).__name__}")
            continue
        if report.status != "done" or report.open_ports() != {ADDRESS: truth}:
            figures.notes.append(f"scan {handle.id[:8]}: {report.status}, wrong open ports")
            continue
        figures.completed += 1
        with session_scope(get_engine()) as session:
            ports = session.scalar(
                select(func.count())
                .select_from(ScanPortRow)
                .where(ScanPortRow.scan_id == handle.id)
            )
            found = session.scalar(
                select(func.count()).select_from(FindingRow).where(FindingRow.scan_id == handle.id)
            )
        if ports != len(truth) or found != len(truth):
            figures.harmless = False
            figures.notes.append(
                f"scan {handle.id[:8]}: {ports} port rows, {found} findings "
                f"for {len(truth)} open ports"
            )
    load.note_redeliveries(load.handles)
    # (whether a killed run had finished, a scan cannot tell: no "completed twice" here)
    figures.rerun = len(load.redelivered)
    return figures
