"""Scan tasks: ``lewis.scan.chunk`` (io) scans one host × port range; ``lewis.scan.merge`` (cpu,
the chord's callback) turns every chunk's open ports into ranked findings; ``lewis.scan.fail``
(the callback's errback) marks a scan whose chord failed. A scan of one chunk is no chord: its
chunk task (``options["merge"]``) merges in place once the chunk is recorded, and
``lewis.scan.fail`` is that task's errback.

Idempotent throughout: a chunk already recorded is not scanned again (a redelivery returns at
once), :func:`~lewis_tasks.storage.scans.record_chunk` moves the counters once, and the merge
upserts findings keyed (scan, host, port, title) with titles that depend on the service only,
so a second merge writes nothing. Progress inside a running chunk is published to a Redis hash
(``infra.progress.SCAN_LIVE_KEY``) for :meth:`~lewis_tasks.producer.scan.ScanHandle.progress`;
the database holds the counters of finished chunks.

The only chunk of a scan also records the scan itself (``options["record"]``: the request and
plan the producer would have written; an upsert keyed by the scan id, so a redelivery finds it
and changes nothing) and returns the scan's stored report with its result: the producer then
needs no database at all (``lewis scan HOST -p 80`` loads no SQLAlchemy). A chord sent the
same way (``options["planned"]``) leaves its plan in Redis instead: the first of its chunks a
worker takes records the scan from it, and the merge (``report=True``) returns the report with
its result. Every scan gives its running slot back (:mod:`lewis_tasks.infra.runningscans`) and
drops its plan when it ends.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis

from ..domain.connectloop import Turns
from ..domain.portscan import PortScanProgress
from ..domain.scanjob import ChunkOutcome, OpenPort, assess_ports, run_chunk
from ..domain.scanreport import build_report
from ..domain.scope import Scope, parse_ip
from ..domain.services import ServiceInfo, guess_name
from ..domain.targets import ScanChunk, Target, resolve_hosts_async
from ..errors import InvalidInput, OutOfScope, TransientError
from ..infra.cancel import CancelCheck, is_cancelled
from ..infra.celery_app import app
from ..infra.config import Settings, get_settings
from ..infra.planning import WORK_SHARE, chunk_deadline
from ..infra.progress import SCAN_LIVE_KEY, ProgressWriter
from ..infra.runningscans import (
    drop_plan,
    mark_plan_recorded,
    plan_to_record,
    release_scan_slot,
)
from ..infra.runtime import runtime
from ..infra.task import LewisTask, chord_cause, stored_failure
from ..infra.vulnlookup import cve_records

log = logging.getLogger(__name__)

LIVE_TTL = 86400
PROGRESS_INTERVAL = 0.5
FILTERED_LISTED = 1000  # filtered ports listed per chunk result (the count is always kept)
CARRIED_REPORT_BYTES = 1 << 20  # a merge's result carries the report up to this size


# ---------------------------------------------------------------- lewis.scan.chunk


@app.task(name="lewis.scan.chunk", bind=True)
def chunk(
    self: LewisTask,
    scan_id: str,
    index: int,
    chunk: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Scan one chunk (a host and its port range), identify its services, record it once;
    the only chunk of a scan (``options["merge"]``) then merges the scan in place and returns
    its report too."""
    options = options or {}
    if options.get("record"):  # the scan's only chunk records the scan (once), before anything
        _record_scan(scan_id, options["record"])  # can fail: a failure is then recorded too
    elif options.get("planned"):  # a chord sent without the database: its plan is in Redis
        _record_planned(scan_id)
    outcome = _record_chunk(self.request.id, scan_id, index, chunk, options)
    if options.get("merge"):  # no chord: a redelivery merges too (idempotent), so it completes
        return {**_merge(scan_id), "report": _report(scan_id)}
    return outcome


def _record_chunk(
    task_id: str | None,
    scan_id: str,
    index: int,
    chunk: Mapping[str, Any],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    part, rate, identify = _chunk_input(scan_id, index, chunk, options)
    cancelled = is_cancelled(runtime().redis(), scan_id)
    # only reads: the chunks of a scan start together, and none waits for another's lock here
    with session_scope(get_engine(read_only=True)) as session:
        pending = scans.chunk_pending(session, scan_id, index)
    if pending is None:
        raise InvalidInput(f"scan {scan_id!r}: no such scan (submit it with submit_scan)")
    if cancelled:  # cancelled before its row existed: the row says so too
        with session_scope(get_engine()) as session:
            scans.cancel_scan(session, scan_id)
    if not pending:
        return {"scan_id": scan_id, "chunk": index, "recorded": False}  # a redelivery
    if cancelled:  # a chunk the revoke missed: not one packet
        return {"scan_id": scan_id, "chunk": index, "recorded": False, "cancelled": True}
    settings = get_settings()
    outcome = _scan(scan_id, index, part, rate, identify, settings)
    result = _chunk_result(part, outcome)
    with session_scope(get_engine()) as session:
        recorded = scans.record_chunk(
            session,
            scan_id,
            index,
            result,
            ports_scanned=outcome.scan.ports_done,
            open_ports=[scans.port_row(p) for p in _open_ports(part, outcome)],
            task_id=task_id,
            host=part.address,
        )
    _forget_live(scan_id, index)
    return {
        "scan_id": scan_id,
        "chunk": index,
        "recorded": recorded,
        "address": part.address,
        "open": result["open"],
        "filtered": result["filtered"],
    }


def _record_scan(scan_id: Any, record: Any) -> None:
    """The scan row, its planned chunk and its targets, as the producer planned them
    (``record``: request, chunks, ports_total, created_at); nothing changes if it exists.
    Committed before the chunk looks at the cancel flag: a cancel that found no row yet has
    set the flag by then, or finds this row and cancels it itself."""
    import datetime as dt

    from ..infra.database import get_engine
    from ..storage import scans, targets
    from ..storage.db import session_scope

    if not isinstance(scan_id, str) or not scan_id:
        raise InvalidInput(f"scan id must be a non-empty string, got {scan_id!r}")
    if not isinstance(record, Mapping) or not isinstance(record.get("request"), Mapping):
        raise InvalidInput(f"scan {scan_id!r}: record must hold the scan's request")
    request, chunks = dict(record["request"]), list(record.get("chunks") or ())
    created = record.get("created_at")
    with session_scope(get_engine()) as session:
        if scans.upsert_scan(
            session,
            scan_id,
            request=request,
            chunks_total=len(chunks),
            ports_total=int(record.get("ports_total") or 0),
            chunks=chunks,
            created_at=dt.datetime.fromtimestamp(float(created), dt.UTC) if created else None,
        ):
            rows = request.get("target_rows") or ()
            targets.upsert_targets(session, [(r["value"], r["kind"]) for r in rows])


def _record_planned(scan_id: Any) -> None:
    """Record the scan from the plan its producer left in Redis, unless a chunk has already.
    A process's chunks take turns, so one of them writes and the rest find the plan marked
    recorded; first chunks of other processes may record it too (upserts: the first plan
    wins)."""
    if not isinstance(scan_id, str):
        return
    rt = runtime()
    with rt.scan.recording:
        _record_plan(rt.redis(), scan_id)


def _record_plan(client: redis.Redis, scan_id: str) -> None:
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    record = plan_to_record(client, scan_id)
    if record is None:
        return
    with session_scope(get_engine(read_only=True)) as session:
        exists = scans.scan_exists(session, scan_id)  # another process's chunk wrote it
    if not exists:
        _record_scan(scan_id, record)
        if is_cancelled(client, scan_id):  # cancelled before its row existed: the row says so
            with session_scope(get_engine()) as session:
                scans.cancel_scan(session, scan_id)
    mark_plan_recorded(client, scan_id)


def _report(scan_id: str) -> dict[str, Any] | None:
    """The scan's stored report, as the caller reads it (the one-chunk scan returns it)."""
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    with session_scope(get_engine()) as session:
        report = scans.read_report(session, scan_id)
    return None if report is None else report.to_dict()


def _free_slot(scan_id: str) -> None:
    """The scan has ended: its running slot is free and its plan gone (a Redis hiccup leaves
    them to expire)."""
    try:
        release_scan_slot(runtime().redis(), scan_id)
        drop_plan(runtime().redis(), scan_id)
    except redis.RedisError as exc:
        log.warning("scan %s: running slot not released (it expires): %s", scan_id, exc)


def _chunk_input(
    scan_id: Any, index: Any, chunk: Any, options: Mapping[str, Any]
) -> tuple[ScanChunk, float | None, bool]:
    if not isinstance(scan_id, str) or not scan_id:
        raise InvalidInput(f"scan id must be a non-empty string, got {scan_id!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidInput(f"chunk index must be an integer ≥ 0, got {index!r}")
    if not isinstance(chunk, Mapping) or "address" not in chunk or "ports" not in chunk:
        raise InvalidInput(f"chunk must be a mapping with address and ports, got {chunk!r}")
    part = ScanChunk.from_dict(dict(chunk))  # parse_ports names a bad spec
    rate = options.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0
    ):
        raise InvalidInput(f"rate must be a number of connections per second > 0, got {rate!r}")
    return part, (float(rate) if rate is not None else None), bool(options.get("services", True))


def _scan(
    scan_id: str,
    index: int,
    part: ScanChunk,
    rate: float | None,
    identify: bool,
    settings: Settings,
) -> ChunkOutcome:
    s = settings.scan
    scope = Scope.from_allow(settings.scope.allow)
    soft = settings.tasks.soft_time_limit
    rt = runtime()
    limiter = None
    if rate:
        from ..infra.ratelimit import RedisTokenBucket

        limiter = RedisTokenBucket(rt.redis(), rate).for_host(part.address)
    publish = _live_publisher(scan_id, index, rt.scan.publisher)
    cancelled = CancelCheck(rt.redis(), scan_id)
    with rt.running_chunk() as running:
        concurrency = max(64, s.concurrency // running)
        deadline = time.monotonic() + chunk_deadline(settings, part, concurrency, rate, identify)
        try:
            return rt.run(
                _resolve_and_run(
                    part,
                    scope,
                    deadline,
                    settings,
                    limiter,
                    identify,
                    concurrency,
                    publish,
                    rt.scan.executor,
                    cancelled,
                    rt.scan.turns,
                ),
                timeout=soft * (WORK_SHARE + 1) / 2,
            )
        except FutureTimeout:
            raise TransientError(
                f"scan chunk {index} of {part.address}: still running after "
                f"{soft * (WORK_SHARE + 1) / 2:.0f} s; stopped"
            ) from None


async def _resolve_and_run(
    part: ScanChunk,
    scope: Scope,
    deadline: float,
    settings: Settings,
    limiter: Any,
    identify: bool,
    concurrency: int,
    publish: Any,
    executor: ThreadPoolExecutor,
    cancelled: Any = None,
    turns: Turns | None = None,
) -> ChunkOutcome:
    # Checked again here, on the worker's own scope: the producer's may differ, and a name may
    # have moved since it was resolved. The scan then connects to the checked address only.
    if part.hostname is not None:
        hosts = await resolve_hosts_async([Target(part.hostname, hostname=part.hostname)], scope)
        resolved = {parse_ip(h.address) for h in hosts}
        if parse_ip(part.address) not in resolved:
            # A name vouches only for its own addresses: a chunk naming "localhost" with
            # another address must not borrow the name's standing.
            raise OutOfScope(
                f"{part.address} is not an address of {part.hostname} "
                f"({', '.join(sorted(h.address for h in hosts))})"
            )
        checked = scope.check_address(part.address, via=part.hostname)
    else:
        checked = scope.check_address(part.address)
    only = Scope((ipaddress.ip_network(checked),), ())
    s = settings.scan
    return await run_chunk(
        str(checked),
        part.port_list(),
        scope=only,
        deadline=deadline,
        concurrency=concurrency,
        timeout=s.timeout,
        retries=s.retries,
        limiter=limiter,
        identify=identify,
        banner_timeout=s.banner_timeout,
        identify_concurrency=s.identify_concurrency,
        on_progress=publish,
        progress_interval=PROGRESS_INTERVAL,
        executor=executor,
        cancelled=cancelled,
        turns=turns,
    )


def _chunk_result(part: ScanChunk, outcome: ChunkOutcome) -> dict[str, Any]:
    scan = outcome.scan
    return {
        "address": part.address,
        "hostname": part.hostname,
        "ports": part.ports,
        "ports_total": scan.ports_total,
        "open": list(scan.open),
        "filtered": len(scan.filtered),
        "filtered_ports": list(scan.filtered[:FILTERED_LISTED]),
        "closed": scan.closed_count,
        "retried": scan.retried,
        "self_connects": scan.self_connects,
        "unidentified": list(outcome.unidentified),
        "seconds": round(outcome.seconds, 3),
        **({"cancelled": True, "ports_done": scan.ports_done} if scan.cancelled else {}),
        **({"timed_out": True, "ports_done": scan.ports_done} if outcome.timed_out else {}),
    }


def _open_ports(part: ScanChunk, outcome: ChunkOutcome) -> list[OpenPort]:
    named = {s.port: s for s in outcome.services}
    return [
        OpenPort(
            part.address,
            named.get(port) or ServiceInfo(port, guess_name(port), probe="not identified"),
            part.hostname,
        )
        for port in outcome.scan.open
    ]


def _live_publisher(scan_id: str, index: int, publisher: ThreadPoolExecutor) -> Any:
    """Publish a running chunk's "done,open" counts off the event loop (the readers'
    format: producer.scanreport); a Redis hiccup only makes the bar coarser."""
    writer = ProgressWriter(
        runtime().redis(), SCAN_LIVE_KEY.format(scan_id=scan_id), str(index), LIVE_TTL, publisher
    )

    def publish(progress: PortScanProgress) -> None:
        writer.publish(f"{progress.done},{progress.open}")

    return publish


def _forget_live(scan_id: str, index: int) -> None:
    try:
        runtime().redis().hdel(SCAN_LIVE_KEY.format(scan_id=scan_id), str(index))
    except redis.RedisError as exc:
        log.debug("live progress of scan %s not cleared: %s", scan_id, exc)


# ---------------------------------------------------------------- lewis.scan.merge / fail


@app.task(name="lewis.scan.merge")
def merge(_header_results: Any = None, scan_id: str = "", report: bool = False) -> dict[str, Any]:
    """Chord callback: findings from every recorded chunk, persisted once; the scan is done.
    ``report``: its stored report comes with the result too, unless it is larger than
    :data:`CARRIED_REPORT_BYTES` (the caller reads that one from the database)."""
    merged = _merge(scan_id)
    if not report:
        return merged
    stored = _report(scan_id)
    if stored is None or len(json.dumps(stored, default=str)) > CARRIED_REPORT_BYTES:
        return merged
    return {**merged, "report": stored}


def _merge(scan_id: Any) -> dict[str, Any]:
    from ..infra.database import get_engine
    from ..storage import scans, targets, vulns
    from ..storage.db import session_scope

    if not isinstance(scan_id, str) or not scan_id:
        raise InvalidInput(f"scan id must be a non-empty string, got {scan_id!r}")
    with session_scope(get_engine()) as session:
        scan = scans.get_scan(session, scan_id)
        if scan is None:
            raise InvalidInput(f"scan {scan_id!r}: no such scan")
        missing = scans.pending_chunks(session, scan_id)
        cancelled = scan.status == "cancelled"  # merged as far as it came, and stays cancelled
        if missing and not cancelled:
            raise TransientError(
                f"scan {scan_id}: {len(missing)} chunks not recorded yet (first: {missing[0]})"
            )
        ports = scans.open_ports(session, scan_id)
        chunk_results = scans.chunk_results(session, scan_id)
        request, first = scan.request or {}, scan.status not in ("done", "cancelled")
    cves = vulns.StoredCves(lambda: session_scope(get_engine()))
    # lookups outside the transaction
    findings = assess_ports(ports, lambda product: cve_records(product, cves))
    summary = build_report(chunk_results, ports, findings).summary
    with session_scope(get_engine()) as session:
        scans.save_findings(session, scan_id, findings)
        scans.set_scan_status(
            session, scan_id, "cancelled" if cancelled else "done", summary=summary
        )
        done = scans.get_scan(session, scan_id)
        values = [t["value"] for t in request.get("target_rows") or ()]
        # only the first merge stamps the targets: a re-merge must not move last_scanned back
        if first and values and done is not None and done.finished_at is not None:
            targets.mark_scanned(session, values, when=done.finished_at)
    _free_slot(scan_id)
    return {"scan_id": scan_id, "status": "cancelled" if cancelled else "done", **summary}


@app.task(name="lewis.scan.fail")
def fail(task_id: str, scan_id: str = "") -> dict[str, Any]:
    """Errback of the merge: the chord failed (a chunk gave up, or the merge did); say why."""
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    # waiting for the stored failure also means a handle that sees "failed" finds it stored
    cause = stored_failure(app, task_id) if task_id else None
    if cause is not None:
        cause = chord_cause(app, cause)
    _record_planned(scan_id)  # failed before any chunk recorded it: the row says why too
    with session_scope(get_engine()) as session:
        scan = scans.get_scan(session, scan_id)
        if scan is None or scan.status in ("done", "cancelled"):  # a revoked chunk fails the chord
            return {"scan_id": scan_id, "status": scan.status if scan else None}
        missing = scans.pending_chunks(session, scan_id)
        reason = (
            f"{type(cause).__name__}: {cause}"
            if isinstance(cause, BaseException)
            else "the scan's chord failed"
        )
        error = reason + (
            f" ({len(missing)} of {scan.chunks_total} chunks unfinished)" if missing else ""
        )
        scans.set_scan_status(session, scan_id, "failed", error=error[:2000])
    _free_slot(scan_id)
    return {"scan_id": scan_id, "status": "failed", "error": error}


__all__ = ["chunk", "merge", "fail"]
