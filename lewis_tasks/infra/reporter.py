"""The metrics reporter: one per process, counting tasks locally and writing to Redis on a timer.

Every worker process (the main one at ``worker_init``, each prefork child at
``worker_process_init``) gets one :class:`MetricsReporter`. Celery's task signals add to an
in-memory :class:`MetricBatch` under a lock — no Redis round trip per task — and a daemon
thread hands the batch to the :class:`MetricStore` every ``monitoring.report_interval``
seconds. The main process also samples psutil figures of itself, its pool children and the
host. If Redis is down the batch is kept (and merged with newer points) until a write
succeeds, so a short outage loses no counts; points older than the retention are dropped.

Producers that publish through Celery (``send_task``, chords, beat) count ``sent`` in the
same way; LEWIS' own bulk producer calls :func:`note_sent` once per push. Every message gets
a ``lewis_sent_at`` header so the worker can time the queue wait.

The process's reporter lives in its worker runtime (:mod:`lewis_tasks.infra.runtime`); the
worker's start and shutdown hooks (:mod:`lewis_tasks.infra.signals`) install and stop it, and
this module connects the task signals that feed it.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..domain.metrics import MetricBatch, series_key, slot_of
from ..errors import InvalidInput
from .messages import SENT_HEADER
from .metrics_store import MetricStore
from .runtime import runtime

log = logging.getLogger(__name__)

EVENTS = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
_MAX_IN_FLIGHT = 100_000  # remembered task starts per process, far above any pool size
_STATE_EVENT = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "REJECTED": "rejected",
}


class MetricsReporter:
    """Counts task events and samples process figures; writes them in batches."""

    def __init__(
        self,
        store_factory: Callable[[], MetricStore],
        hostname: str,
        *,
        interval: float,
        report_interval: float,
        retention: float,
        system: bool = False,
        active: Callable[[], int] | None = None,
    ) -> None:
        self.hostname = hostname
        self.interval = interval  # slot width (monitoring.metrics_interval)
        self.report_interval = report_interval
        self.retention = retention
        self.system = system
        self._active = active
        self._store_factory = store_factory
        self._store: MetricStore | None = None
        self._lock = threading.Lock()
        self._batch = MetricBatch()
        self._series: dict[tuple[str, ...], str] = {}
        # task id → its runtime clock (the task's ``runtime_clock``, else perf_counter) and
        # that clock's reading at the start
        self._started: dict[str, tuple[Callable[[], float], float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._sampler: _SystemSampler | None = _SystemSampler() if system else None
        self.pid = os.getpid()

    # --- recording (hot path: a lock and a few dict updates) -------------------------------

    def _key(self, metric: str, *labels: str) -> str:
        key = (metric, *labels)
        series = self._series.get(key)
        if series is None:
            names: tuple[str, ...] = ("name", "hostname", "queue")
            series = self._series[key] = series_key(metric, dict(zip(names, labels, strict=False)))
        return series

    def count(self, event: str, name: str, queue: str, n: int = 1) -> None:
        metric = f"celery_task_{event}_total"
        series = self._key(metric, name, self.hostname, queue or "")
        slot = int(time.time() // self.interval)
        with self._lock:
            self._batch.inc(slot, series, metric, n)

    def observe(self, metric: str, name: str, seconds: float) -> None:
        series = self._key(metric, name, self.hostname)
        slot = int(time.time() // self.interval)
        with self._lock:
            self._batch.observe(slot, series, metric, seconds)

    def task_started(
        self,
        task_id: str,
        name: str,
        queue: str,
        sent_at: float | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``clock`` times the task's runtime: wall time, or the thread's CPU time for a task
        that never waits (a packable io task's plain body: its cost, not its wait for the GIL
        behind the pool's other threads)."""
        now = time.time()
        if len(self._started) > _MAX_IN_FLIGHT:  # starts whose end never came (killed tasks)
            self._started.clear()
        self._started[task_id] = (clock, clock())
        metric = "celery_task_started_total"
        series = self._key(metric, name, self.hostname, queue or "")
        slot = int(now // self.interval)
        with self._lock:
            self._batch.inc(slot, series, metric)
            if sent_at is not None:
                wait = self._key("celery_task_queue_wait_time", name, self.hostname)
                self._batch.observe(
                    slot, wait, "celery_task_queue_wait_time", max(0.0, now - sent_at)
                )

    def task_finished(self, task_id: str, name: str, queue: str, state: str | None) -> None:
        started = self._started.pop(task_id, None)
        event = _STATE_EVENT.get(state or "")
        slot = int(time.time() // self.interval)
        with self._lock:
            if event is not None:
                metric = f"celery_task_{event}_total"
                self._batch.inc(slot, self._key(metric, name, self.hostname, queue or ""), metric)
            if started is not None:
                clock, began = started
                self._batch.observe(
                    slot,
                    self._key("celery_task_runtime", name, self.hostname),
                    "celery_task_runtime",
                    clock() - began,
                )

    def gauge(self, metric: str, value: float, **labels: str) -> None:
        with self._lock:
            self._batch.gauge(series_key(metric, labels), metric, value, time.time())

    # --- writing ---------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write what was gathered; on a Redis error keep it for the next flush (False)."""
        now = time.time()
        if self._sampler is not None:
            for metric, value, labels in self._sampler.sample(self.hostname, self._active):
                self.gauge(metric, value, **labels)
        with self._lock:
            batch, self._batch = self._batch, MetricBatch()
        if not batch and not batch.kinds:
            return True
        try:
            if self._store is None:
                self._store = self._store_factory()
            self._store.write(batch, now=now)
        except Exception as exc:  # Redis down (or not configured): keep the points
            with self._lock:
                batch.merge(self._batch)
                batch.drop_before(slot_of(now - self.retention, self.interval))
                self._batch = batch
            if not self._failing:
                log.warning(
                    "metrics: Redis unavailable (%s); counting locally until it returns", exc
                )
            self._failing = True
            return False
        if self._failing:
            log.warning("metrics: Redis is back; the counts kept meanwhile are written")
        self._failing = False
        return True

    def start(self) -> MetricsReporter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lewis-metrics", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.report_interval):
            try:
                self.flush()
            except Exception:  # the reporter must never take a worker down
                log.exception("metrics: flush failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the timer and write what is left (best effort)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        try:
            self.flush()
        except Exception:
            log.exception("metrics: last flush failed")


class _SystemSampler:
    """psutil figures of this worker (main process + pool children) and of the host."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._children: dict[int, Any] = {}
        self._me.cpu_percent()
        psutil.cpu_percent()
        self._host = socket.gethostname()

    def sample(
        self, hostname: str, active: Callable[[], int] | None
    ) -> list[tuple[str, float, dict[str, str]]]:
        ps = self._psutil
        procs = [self._me]
        try:
            for child in self._me.children(recursive=True):
                known = self._children.get(child.pid)
                if known is None:
                    child.cpu_percent()
                    self._children[child.pid] = known = child
                procs.append(known)
        except ps.Error:
            pass
        alive = {p.pid for p in procs}
        for pid in [p for p in self._children if p not in alive]:
            del self._children[pid]
        cpu = rss = fds = threads = 0.0
        for proc in procs:
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent()
                    rss += proc.memory_info().rss
                    fds += proc.num_fds()
                    threads += proc.num_threads()
            except ps.Error:
                continue
        w = {"hostname": hostname}
        h = {"host": self._host}
        out = [
            ("lewis_worker_cpu_percent", cpu, w),
            ("lewis_worker_rss_bytes", rss, w),
            ("lewis_worker_open_fds", fds, w),
            ("lewis_worker_threads", threads, w),
            ("lewis_worker_processes", float(len(procs)), w),
            ("lewis_worker_last_report_timestamp", time.time(), w),
        ]
        if active is not None:
            out.append(("celery_worker_tasks_active", float(active()), w))
        mem = ps.virtual_memory()
        net = ps.net_io_counters()
        out += [
            ("lewis_host_cpu_percent", ps.cpu_percent(), h),
            ("lewis_host_memory_used_bytes", float(mem.total - mem.available), h),
            ("lewis_host_memory_percent", mem.percent, h),
            ("lewis_host_disk_used_percent", ps.disk_usage("/").percent, h),
            ("lewis_host_network_sent_bytes", float(net.bytes_sent), h),
            ("lewis_host_network_received_bytes", float(net.bytes_recv), h),
            ("lewis_host_load1", os.getloadavg()[0], h),
        ]
        return out


# --- the process's reporter and its signal connections ------------------------------------


def current() -> MetricsReporter | None:
    """This process's reporter (None outside workers until something is sent)."""
    return runtime().reporter


def install(
    hostname: str, *, system: bool, active: Callable[[], int] | None = None, start: bool = True
) -> MetricsReporter:
    """Create (and start) this process's reporter from the settings."""
    from .config import get_settings
    from .metrics_store import store_from_settings

    m = get_settings().monitoring
    rt = runtime()
    old, rt.reporter = rt.reporter, None
    if old is not None:
        old.stop()
    reporter = MetricsReporter(
        store_from_settings,
        hostname,
        interval=m.metrics_interval,
        report_interval=m.report_interval,
        retention=m.retention,
        system=system,
        active=active,
    )
    rt.reporter = reporter
    return reporter.start() if start else reporter


def uninstall() -> None:
    rt = runtime()
    reporter, rt.reporter = rt.reporter, None
    if reporter is not None:
        reporter.stop()


def _enabled() -> bool:
    from .config import get_settings

    try:
        return get_settings().monitoring.reporting
    except Exception:  # no readable settings: nothing to report to
        return False


def note_sent(name: str, queue: str, n: int = 1) -> None:
    """Count ``n`` messages of task ``name`` sent to ``queue`` by this process."""
    reporter = current()
    if reporter is None and _enabled():
        reporter = _producer_reporter()
    if reporter is not None:
        reporter.count("sent", name, queue, n)


def _producer_reporter() -> MetricsReporter | None:
    from .config import get_settings

    try:
        if not get_settings().broker.url:  # an app given its URLs by hand: nowhere to report
            return None
        reporter = install(runtime().hostname or f"producer@{socket.gethostname()}", system=False)
    except Exception:  # no settings, no broker: sending is what matters here
        return None
    atexit.register(reporter.stop)
    return reporter


def _queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


def _on_publish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    if headers is not None:
        headers.setdefault(SENT_HEADER, time.time())
    if sender:
        note_sent(sender, routing_key or "")


def start_worker_reporter(sender: Any = None) -> None:
    """A worker's main process: its reporter, with the system figures (signals.py calls it at
    ``worker_init``; ``sender`` is the worker)."""
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    runtime().hostname = hostname
    if not _enabled():
        return

    def active() -> int:
        from celery.worker import state

        return len(state.active_requests)

    install(hostname, system=True, active=active)


def start_child_reporter() -> None:
    """A prefork child: a reporter of its own, without the system figures (signals.py calls
    it at ``worker_process_init``)."""
    if _enabled():
        install(runtime().hostname or socket.gethostname(), system=False)


def _on_received(request: Any = None, **_: Any) -> None:
    reporter = current()
    if reporter is not None and request is not None:
        reporter.count("received", request.name, _queue_of(request))


def _on_prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    reporter = current()
    if reporter is not None and task is not None:
        request = task.request
        sent = getattr(request, SENT_HEADER, None)
        reporter.task_started(
            task_id,
            task.name,
            _queue_of(request),
            float(sent) if isinstance(sent, (int, float)) else None,
            getattr(task, "runtime_clock", time.perf_counter),
        )


def _on_postrun(
    task_id: str = "", task: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    reporter = current()
    if reporter is not None and task is not None:
        if state == "FAILURE" and isinstance(retval, InvalidInput):
            state = "REJECTED"  # a refused request, not a failure of the system
        reporter.task_finished(task_id, task.name, _queue_of(task.request), state)


def _on_rejected(message: Any = None, **_: Any) -> None:
    reporter = current()
    if reporter is not None:
        headers = getattr(message, "headers", None) or {}
        info = getattr(message, "delivery_info", None) or {}
        reporter.count("rejected", str(headers.get("task", "")), str(info.get("routing_key", "")))


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    # Celery sends the task as the sender and, from the worker's request, its task Context
    # (which has no ``name``: the handler raised AttributeError there and counted nothing)
    reporter = current()
    if reporter is not None and request is not None:
        name = getattr(sender, "name", None) or getattr(request, "task", None) or "unknown"
        reporter.count("revoked", str(name), _queue_of(request))


def connect_signals() -> None:
    """Count what Celery does in this process: sends (``before_task_publish``), and in a
    worker every task received, run, rejected or revoked. Called where the Celery app is built
    (infra/celery_app.py), so a producer that never builds it imports no Celery for this."""
    from celery import signals

    for signal, handler in (
        (signals.before_task_publish, _on_publish),
        (signals.task_received, _on_received),
        (signals.task_prerun, _on_prerun),
        (signals.task_postrun, _on_postrun),
        (signals.task_rejected, _on_rejected),
        (signals.task_revoked, _on_revoked),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"lewis-reporter-{handler.__name__}")


__all__ = [
    "MetricsReporter",
    "connect_signals",
    "install",
    "uninstall",
    "current",
    "note_sent",
    "start_worker_reporter",
    "start_child_reporter",
    "EVENTS",
    "SENT_HEADER",
]
