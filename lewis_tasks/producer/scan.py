"""Submitting a scan: ``submit_scan(...) -> ScanHandle``.

Everything that can be refused is refused before anything is enqueued or written: targets and
the port spec are parsed (InvalidInput naming the bad token), every address is resolved and
checked by the scope (OutOfScope), the plan is checked against ``scan.max_ports_total`` and the
number of running scans against ``performance.max_concurrent_scans`` (refused, not queued:
the caller sees at once why, and the running scans are listed by ``lewis scans list``). Then
the scan takes a running slot (counted in Redis: :mod:`lewis_tasks.infra.runningscans`), its
row and planned chunks are written (idempotent upserts keyed by the scan id), and the chord is
sent: chunk tasks on the io queue, the merge on the cpu queue. Under a rate limit the chunks of
one host run one after another (a chain inside the chord): the rate is per host, so running
them side by side would only stretch each past its time limit.

A scan of one chunk pays for no fan-out: it is one task on the io queue that records the scan
row itself, merges in place and returns the scan's report with its result. A scan of many
chunks without a rate limit is the same chord Celery's canvas sends, written by hand
(``infra.messages``); its plan waits in Redis and its first chunk a worker takes records the
scan from it, and the merge returns the report with its result. Either is sent and waited on
without Celery's app and without the database (``lewis scan HOST -p-`` loads neither Celery
nor SQLAlchemy); its row appears once a worker takes it. A rate-limited scan chains each
host's chunks inside the chord: that one is recorded here and sent by Celery's canvas.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..domain.scope import Scope
from ..domain.targets import (
    ScanChunk,
    ScanHost,
    Target,
    parse_ports,
    parse_targets,
    plan_chunks,
    resolve_hosts,
)
from ..errors import BrokerUnavailable, InvalidInput, LewisError
from ..infra.config import Settings, get_settings
from ..infra.messages import signature
from ..infra.redis_client import reach_broker
from .base import FALLBACK_POLL, _app, broker_url, publishing, send_one
from .handle import JobHandle, unwrap_failure
from .scanreport import TERMINAL, ScanProgress, ScanReport, load_scan_report, read_progress

if TYPE_CHECKING:
    from celery import Celery

DEFAULT_PORTS = "top1000"


@dataclass
class ScanHandle(JobHandle[ScanProgress, ScanReport]):
    """A submitted scan: its progress while it runs, its report when it is done."""

    id: str
    app: Celery | None = None  # None: Celery's app is built when something needs it
    merge_id: str | None = None  # the task that merges: the chord's callback, or the only chunk
    # (None for a scan looked up by id)
    planned: ScanProgress | None = None  # sent without Celery: its progress until it is recorded
    _report: ScanReport | None = field(default=None, repr=False, compare=False)
    what: ClassVar[str] = "scan"

    def progress(self) -> ScanProgress:
        """Chunks done/total, ports done/total and open ports so far (finished chunks from the
        database, running ones from their live counters)."""
        if self._report is not None:
            return self._report.progress
        try:
            return read_progress(self.id)
        except InvalidInput:  # a scan no worker has taken yet has no row
            if self.planned is not None:
                return self.planned
            if not _holds_slot(self.id):
                raise
            return ScanProgress(self.id, "running", 1, 0, 0, 0, 0)

    def done(self) -> bool:
        return self.progress().status in TERMINAL

    def wait(self, timeout: float | None = None, interval: float = FALLBACK_POLL) -> ScanReport:
        """Block until the scan is done and return its report; raise why if it failed.

        A scan sent without Celery's app (``planned``) has its report come with its last
        task's result, by push (no database read).

        Woken by a push: the merging task's result (the Redis backend publishes it once the
        scan is stored as done or the merge failed). The database is read again at least every
        ``interval`` seconds, so a lost push (or a handle without a merge id) costs that much
        at most. WaitTimeout (a TimeoutError) if it is still running after ``timeout`` seconds
        (it keeps running).
        """
        if self.planned is not None and self.merge_id is not None:
            return self._wait_one(timeout, interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.progress().status
            if status == "done":
                return self.result()
            self._raise_failure(status)
            left = interval if deadline is None else min(interval, deadline - time.monotonic())
            if left <= 0:
                raise self.timed_out(timeout)
            self._await_merge(left)

    def _wait_one(self, timeout: float | None, interval: float) -> ScanReport:
        """The report of a scan sent without Celery's app, from its last task's result (the
        only chunk's, or the merge's; the database if a worker of an older version sent
        none); why it did not end done, raised."""
        assert self.merge_id is not None and self.planned is not None
        parts = [chunk_task_id(self.id, i) for i in range(self.planned.chunks_total)]
        try:
            result = self.await_task(self.merge_id, timeout, interval, parts)
        except TimeoutError:
            raise
        except Exception:  # a cancel fails a chord too (its revoked parts): say cancelled
            stored = load_scan_report(self.id)
            if stored is not None and stored.status == "cancelled":
                raise LewisError(
                    f"scan {self.id} cancelled: {stored.error or 'on request'}"
                ) from None
            raise
        carried = result.get("report") if isinstance(result, dict) else None
        report = ScanReport.from_dict(carried) if carried else self.result()
        self._report = report
        if report.status == "cancelled":
            raise LewisError(f"scan {self.id} cancelled: {report.error or 'on request'}")
        if report.status != "done":
            raise LewisError(
                f"scan {self.id} {report.status}: {report.error or 'no reason recorded'}"
            )
        return report

    def _await_merge(self, seconds: float) -> None:
        """Return when the merging task has a result, or after ``seconds``."""
        if self.merge_id is None:
            time.sleep(seconds)
            return
        from celery.exceptions import TimeoutError as ResultTimeout
        from celery.result import AsyncResult

        with contextlib.suppress(ResultTimeout):
            AsyncResult(self.merge_id, app=self.celery_app()).get(timeout=seconds, propagate=False)

    def cancel(self) -> bool:
        """Stop the scan: its queued chunks are revoked, running ones stop at their next look
        at the cancel flag (within ~0.2 s) and record what they had scanned, and the scan ends
        ``cancelled``. False (and nothing changes) if it had finished already; cancelling twice
        is harmless. InvalidInput if there is no such scan."""
        return cancel_scan(self.id, app=self.app)

    def result(self) -> ScanReport:
        """The scan's report as stored now (complete once :meth:`wait` returned)."""
        if self._report is not None:  # as its last task read it back
            return self._report
        report = load_scan_report(self.id)
        if report is None:
            raise InvalidInput(f"scan {self.id!r}: no such scan")
        return report

    def _raise_failure(self, status: str) -> None:
        if status == "cancelled":  # its revoked chunks fail the chord too: the row says why
            raise LewisError(f"scan {self.id} cancelled: {self.result().error or 'on request'}")
        if self.merge_id is not None:
            from celery.result import AsyncResult

            merged = AsyncResult(self.merge_id, app=self.celery_app())
            if merged.state == "FAILURE":
                cause = merged.result
                if isinstance(cause, BaseException):
                    raise unwrap_failure(self.celery_app(), cause)
        if status in TERMINAL:  # failed or cancelled
            report = self.result()
            raise LewisError(f"scan {self.id} {status}: {report.error or 'no reason recorded'}")


def scan_handle(scan_id: str, *, app: Celery | None = None) -> ScanHandle:
    """A handle on a scan submitted earlier (by this process or any other)."""
    return ScanHandle(scan_id, app)


def chunk_task_id(scan_id: str, index: int) -> str:
    """The task id of a scan's chunk ``index``: known without asking, so it can be revoked."""
    return f"{scan_id}-c{index}"


def cancel_scan(scan_id: str, *, app: Celery | None = None) -> bool:
    """See :meth:`ScanHandle.cancel`."""
    from ..infra.cancel import request_cancel
    from ..infra.database import get_engine
    from ..infra.redis_client import get_redis
    from ..storage import scans
    from ..storage.db import session_scope

    app = _app(app)
    broker_url(app)
    with session_scope(get_engine()) as session:
        scan = scans.get_scan(session, scan_id)
        if scan is None and not _holds_slot(scan_id):
            raise InvalidInput(f"scan {scan_id!r}: no such scan")
        total = scan.chunks_total if scan is not None else _planned_total(scan_id)
        # the row first: a chunk that sees the flag may merge at once, and must find it cancelled
        cancelled = scans.cancel_scan(session, scan_id) if scan is not None else True
    if cancelled:
        with publishing(app):
            request_cancel(
                get_redis(),
                app,
                scan_id,
                [chunk_task_id(scan_id, i) for i in range(total)],
                get_settings().broker.result_expires,
            )
        if scan is None:  # its task may have recorded it meanwhile (it then checks the flag too)
            with session_scope(get_engine()) as session:
                scans.cancel_scan(session, scan_id)
        _free_slot(scan_id)
    return cancelled


def _planned_total(scan_id: str) -> int:
    """Chunks of a scan no worker has recorded yet: its plan's count (none: one chunk)."""
    from ..infra.redis_client import get_redis
    from ..infra.runningscans import planned_chunks

    return planned_chunks(get_redis(), scan_id) or 1


def is_queued(scan_id: str) -> bool:
    """A scan submitted without the database that no worker has recorded yet (it has no row,
    and holds its running slot)."""
    return load_scan_report(scan_id) is None and _holds_slot(scan_id)


def _holds_slot(scan_id: str) -> bool:
    """A scan submitted and not ended (one no worker has recorded yet, say)."""
    from ..infra.redis_client import get_redis
    from ..infra.runningscans import running_scans

    return scan_id in running_scans(get_redis(), get_settings().broker.result_expires)


def _take_slot(scan_id: str, settings: Settings) -> None:
    """A running slot for the scan, or InvalidInput naming the cap (nothing is enqueued)."""
    from ..infra.redis_client import get_redis
    from ..infra.runningscans import claim_scan_slot

    cap = settings.performance.max_concurrent_scans
    # A scan older than the result lifetime can never complete (its chord's results are gone):
    # it no longer holds a slot.
    with publishing(settings.broker.url):
        taken, running = claim_scan_slot(get_redis(), scan_id, cap, settings.broker.result_expires)
    if not taken:
        raise InvalidInput(
            f"{running} scans are running, the cap is {cap} "
            "(performance.max_concurrent_scans); wait for one to finish"
        )


def _free_slot(scan_id: str) -> None:
    from ..infra.redis_client import get_redis
    from ..infra.runningscans import release_scan_slot

    release_scan_slot(get_redis(), scan_id)


def submit_scan(
    targets: str | Iterable[str],
    ports: str = DEFAULT_PORTS,
    rate: float | None = None,
    *,
    services: bool = True,
    exclude: Iterable[str] = (),
    app: Celery | None = None,
    before_send: Callable[[], None] | None = None,
) -> ScanHandle:
    """Scan ``targets`` (addresses, CIDRs, hostnames) on ``ports`` (an nmap-style spec).

    ``rate`` caps connects per second per host across every worker (default
    ``scan.max_rate`` if set); ``services=False`` skips service identification (like nmap
    without ``-sV``). ``exclude`` leaves out addresses, CIDR blocks and hostnames (nmap's
    ``--exclude``). Refusals (InvalidInput, OutOfScope, or whatever ``before_send`` raises
    once the input is checked and the broker answers) happen before anything is enqueued.
    """
    settings = get_settings()
    tokens = [targets] if isinstance(targets, str) else list(targets)
    parsed = parse_targets(tokens, max_hosts=settings.scan.max_hosts)
    port_list = parse_ports(ports)
    rate = _rate(rate, settings)
    hosts = resolve_hosts(parsed, Scope.from_allow(settings.scope.allow))
    excluded = [str(e) for e in exclude]
    if excluded:
        hosts = _without(hosts, excluded)
    from ..infra.planning import chunk_ports_for

    slots, processes = _io_capacity_online()
    size = chunk_ports_for(
        settings,
        rate,
        hosts=len(hosts),
        ports=len(set(port_list)),
        slots_online=slots,
        processes_online=processes,
    )
    chunks = plan_chunks(
        hosts, port_list, chunk_ports=size, max_ports_total=settings.scan.max_ports_total
    )
    url = broker_url(app)
    # a dead broker is found before the scan row is written: no row says "failed: not enqueued"
    reach_broker(url, settings.monitoring.ping_timeout)
    if before_send is not None:  # the caller's last word (say, no io worker online): no row yet
        before_send()
    scan_id = uuid.uuid4().hex
    request = {
        "targets": tokens,
        "ports": ports,
        "rate": rate,
        "services": services,
        **({"exclude": excluded} if excluded else {}),
        "hosts": [h.to_dict() for h in hosts],
        "target_rows": _target_rows(parsed),
    }
    options = {"rate": rate, "services": services}
    _take_slot(scan_id, settings)
    if len(chunks) == 1:  # one chunk pays for no fan-out: one task, no Celery app, no database
        return _send_one(url, scan_id, request, chunks[0], options, app)
    if not rate:  # a chord written by hand: no Celery app, no database either
        return _send_chord(url, scan_id, request, chunks, options, app, settings)
    _record(scan_id, request, chunks)  # chains per host inside the chord: Celery's canvas
    app = _app(app)
    try:
        merge_id = _send(app, scan_id, chunks, options)
    except Exception as exc:  # the broker refused: say so, and leave no scan "running"
        _mark_failed(scan_id, f"not enqueued: {exc}")
        raise BrokerUnavailable(f"scan {scan_id}: could not enqueue its tasks ({exc})") from exc
    return ScanHandle(scan_id, app, merge_id)


def _send_one(
    url: str,
    scan_id: str,
    request: dict[str, Any],
    chunk: ScanChunk,
    options: dict[str, Any],
    app: Celery | None,
) -> ScanHandle:
    """The scan's only chunk, sent as the one task that records the scan, scans, merges in
    place and returns the report; ``lewis.scan.fail`` is its errback."""
    task_id = chunk_task_id(scan_id, 0)
    record = _plan_record(request, [chunk])
    args = [scan_id, 0, chunk.to_dict(), {**options, "merge": True, "record": record}]
    try:
        send_one(
            url,
            "lewis.scan.chunk",
            task_id,
            args,
            errbacks=[signature("lewis.scan.fail", kwargs={"scan_id": scan_id})],
        )
    except Exception as exc:  # not enqueued: no row was written, the slot is given back
        _free_slot(scan_id)
        raise BrokerUnavailable(f"scan {scan_id}: could not enqueue its task ({exc})") from exc
    planned = ScanProgress(scan_id, "running", 1, 0, chunk.port_count, 0, 0)
    return ScanHandle(scan_id, app, task_id, planned)


def _send_chord(
    url: str,
    scan_id: str,
    request: dict[str, Any],
    chunks: Sequence[ScanChunk],
    options: dict[str, Any],
    app: Celery | None,
    settings: Settings,
) -> ScanHandle:
    """The scan's chunks as the chord Celery's canvas would send (parts on the io queue, the
    merge as its body, ``lewis.scan.fail`` the body's errback), written by hand. The scan row
    is not written here: its plan waits in Redis and the first chunk a worker takes records
    it (``options["planned"]``); the merge returns the report with its result."""
    from ..infra.messages import (
        chord_callback,
        message_origin,
        push_messages,
        queue_key,
        task_message,
    )
    from ..infra.redis_client import get_redis
    from ..infra.reporter import note_sent
    from ..infra.results import set_chord_size
    from ..infra.routing import queue_for
    from ..infra.runningscans import drop_plan, save_plan

    group_id, merge_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = chord_callback(
        "lewis.scan.merge",
        {"scan_id": scan_id, "report": True},
        task_id=merge_id,
        group_id=group_id,
        errbacks=[signature("lewis.scan.fail", kwargs={"scan_id": scan_id})],
    )
    queue, origin = queue_for("lewis.scan.chunk"), message_origin()
    part_options = {**options, "planned": True}
    messages = [
        task_message(
            "lewis.scan.chunk",
            chunk_task_id(scan_id, i),
            [scan_id, i, c.to_dict(), part_options],
            {},
            queue,
            origin,
            0,
            chord=(body, i),
        )
        for i, c in enumerate(chunks)
    ]
    record = _plan_record(request, chunks)
    lifetime = settings.broker.result_expires
    try:
        with publishing(url):
            save_plan(get_redis(), scan_id, record, len(chunks), lifetime)
            set_chord_size(settings.result_backend, group_id, len(chunks), lifetime)
            push_messages(url, queue_key(queue, 0), messages)
    except Exception as exc:  # not enqueued (or not surely): nothing is left "running"
        with contextlib.suppress(Exception):
            drop_plan(get_redis(), scan_id)
        with contextlib.suppress(Exception):
            _free_slot(scan_id)
        raise BrokerUnavailable(f"scan {scan_id}: could not enqueue its tasks ({exc})") from exc
    note_sent("lewis.scan.chunk", queue, len(messages))
    planned = ScanProgress(scan_id, "running", len(chunks), 0, record["ports_total"], 0, 0)
    return ScanHandle(scan_id, app, merge_id, planned)


def _plan_record(request: dict[str, Any], chunks: Sequence[ScanChunk]) -> dict[str, Any]:
    """What a worker records for a scan sent without the database (``tasks.scan``'s
    ``_record_scan``): the request, the planned chunks, the port total, when it was sent."""
    return {
        "request": request,
        "chunks": [_planned(i, c) for i, c in enumerate(chunks)],
        "ports_total": sum(c.port_count for c in chunks),
        "created_at": time.time(),
    }


def _planned(index: int, chunk: ScanChunk) -> dict[str, Any]:
    return {"chunk_index": index, "host": chunk.address, "ports": chunk.ports.split(",")}


def _io_capacity_online() -> tuple[int, int]:
    """io slots and io processes of the workers online (their presence records); 0, 0 if the
    broker cannot say."""
    from ..infra.fleet import capacity_online
    from ..infra.redis_client import broker_errors, get_redis

    if not get_settings().broker.url:
        return 0, 0  # no broker: _require_broker says so
    try:
        with broker_errors():
            return capacity_online(get_redis(), "io")
    except BrokerUnavailable:
        return 0, 0  # the broker check right after says what is wrong


def _without(hosts: Sequence[ScanHost], exclude: Sequence[str]) -> list[ScanHost]:
    """``hosts`` less those ``exclude`` names: an address, a CIDR block holding it, or the
    hostname it was resolved from. Nothing left is a refusal, not an empty scan."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    names: set[str] = set()
    for token in (t for item in exclude for t in item.replace(",", " ").split()):
        try:
            networks.append(ipaddress.ip_network(token, strict=False))
        except ValueError:
            names.add(token.lower().rstrip("."))
    kept = [
        h
        for h in hosts
        if (h.hostname or "").lower().rstrip(".") not in names
        and not any(ipaddress.ip_address(h.address) in n for n in networks)
    ]
    if not kept:
        raise InvalidInput(f"every target is excluded (--exclude {' '.join(exclude)})")
    return kept


def _rate(rate: float | None, settings: Settings) -> float | None:
    if rate is None:
        return float(settings.scan.max_rate) if settings.scan.max_rate else None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise InvalidInput(f"rate {rate!r}: connections per second must be a number above 0")
    return float(rate)


def _target_rows(targets: Sequence[Target]) -> list[dict[str, str]]:
    rows = []
    for t in targets:
        if t.hostname is not None:
            rows.append({"value": t.hostname, "kind": "hostname"})
        elif "/" in t.text:
            rows.append({"value": t.text, "kind": "cidr"})
        else:
            rows.append({"value": t.addresses[0], "kind": "ip"})
    return rows


def _record(scan_id: str, request: dict[str, Any], chunks: Sequence[ScanChunk]) -> None:
    from ..infra.database import get_engine
    from ..storage import scans, targets
    from ..storage.db import session_scope

    with session_scope(get_engine()) as session:
        scans.upsert_scan(
            session,
            scan_id,
            request=request,
            chunks_total=len(chunks),
            ports_total=sum(c.port_count for c in chunks),
            chunks=[_planned(i, c) for i, c in enumerate(chunks)],
        )
        targets.upsert_targets(session, [(r["value"], r["kind"]) for r in request["target_rows"]])


def _send(app: Celery, scan_id: str, chunks: Sequence[ScanChunk], options: dict[str, Any]) -> str:
    from celery import chain, chord

    def part(index: int, c: ScanChunk) -> Any:
        sig = app.signature(
            "lewis.scan.chunk", args=(scan_id, index, c.to_dict(), options), immutable=True
        )
        return sig.set(task_id=chunk_task_id(scan_id, index))

    errback = app.signature("lewis.scan.fail", kwargs={"scan_id": scan_id})
    parts = [part(i, c) for i, c in enumerate(chunks)]
    header: list[Any] = parts
    if options.get("rate"):
        by_host: dict[str, list[Any]] = {}
        for sig, c in zip(parts, chunks, strict=True):
            by_host.setdefault(c.address, []).append(sig)
        header = [chain(*sigs) if len(sigs) > 1 else sigs[0] for sigs in by_host.values()]
    body = app.signature("lewis.scan.merge", kwargs={"scan_id": scan_id})
    body.link_error(errback)
    result = chord(header, app=app)(body)
    _unsubscribe(app, result)
    return str(result.id)


def _unsubscribe(app: Celery, result: Any) -> None:
    # Sending subscribes this process to every task's result channel (Redis backend), and the
    # canvas keeps the header's results as waiters; nobody here waits on them (the handle reads
    # the database), and at interpreter exit their __del__ would try to unsubscribe from a
    # Redis client that is already gone. Unsubscribe now, while it is alive.
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is None:
        return
    seen: set[str] = set()
    todo = [result]
    while todo:
        item = todo.pop()
        if item is None or item.id in seen:
            continue
        seen.add(item.id)
        consumer.cancel_for(item.id)
        todo.extend(getattr(item, "results", None) or ())
        todo.append(getattr(item, "parent", None))


def _mark_failed(scan_id: str, error: str) -> None:
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    with session_scope(get_engine()) as session:
        scans.set_scan_status(session, scan_id, "failed", error=error[:2000])
    _free_slot(scan_id)


__all__ = [
    "ScanHandle",
    "ScanReport",
    "submit_scan",
    "scan_handle",
    "cancel_scan",
    "is_queued",
    "load_scan_report",
    "DEFAULT_PORTS",
]
