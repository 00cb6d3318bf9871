"""A scan as the caller reads it back: live progress, and the report from the database.

:func:`read_progress` adds to the database counters (finished chunks) what running chunks
published in Redis (``infra.progress.SCAN_LIVE_KEY``), so a progress bar moves inside a long chunk; a
Redis hiccup only makes it coarser. :func:`load_scan_report` gives per host the open ports
with service/product/version and the findings ranked most severe first: the domain's
:func:`~lewis_tasks.domain.scanreport.build_report`, the one the merge computes its summary with.
"""

from __future__ import annotations

import dataclasses
import logging

from ..domain.scanreport import TERMINAL, HostReport, ScanProgress, ScanReport
from ..errors import BrokerUnavailable, InvalidInput

log = logging.getLogger(__name__)


def read_progress(scan_id: str) -> ScanProgress:
    """The scan's progress: database counters plus the live counters of unfinished chunks."""
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    # Live counters first: a chunk deletes its own after recording itself, so read in this
    # order a finished chunk is counted from the database, never dropped between the two reads.
    live = _live(scan_id)
    with session_scope(get_engine()) as session:
        progress = scans.scan_progress(session, scan_id)
        pending = set(scans.pending_chunks(session, scan_id)) if progress else set()
    if progress is None:
        raise InvalidInput(f"scan {scan_id!r}: no such scan")
    if not pending or progress.status != "running":
        return progress
    done = opened = 0
    for index, value in live.items():
        if index in pending:
            d, _, o = value.partition(",")
            done, opened = done + int(d or 0), opened + int(o or 0)
    return dataclasses.replace(
        progress,
        ports_done=min(progress.ports_total, progress.ports_done + done),
        open_count=progress.open_count + opened,
    )


def _live(scan_id: str) -> dict[int, str]:
    from ..infra.progress import SCAN_LIVE_KEY
    from ..infra.redis_client import broker_errors, get_redis

    try:
        with broker_errors():
            raw = get_redis().hgetall(SCAN_LIVE_KEY.format(scan_id=scan_id))
    except BrokerUnavailable as exc:
        log.debug("live progress of scan %s unavailable: %s", scan_id, exc)
        return {}
    out: dict[int, str] = {}
    for key, value in raw.items():
        try:
            out[int(key)] = value.decode() if isinstance(value, bytes) else str(value)
        except ValueError:
            continue
    return out


def resolve_scan_id(text: str) -> str:
    """The scan id ``text`` names: the id itself, or a unique prefix of one (as git takes a
    commit's); InvalidInput if none or several match."""
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    key = text.strip().lower()
    with session_scope(get_engine()) as session:
        if scans.get_scan(session, key) is not None:
            return key
        found = scans.scan_ids_starting(session, key)
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidInput(f"scan {text!r}: no such scan (`lewis scans list` shows them)")
    raise InvalidInput(
        f"scan {text!r}: the prefix is ambiguous, it starts "
        f"{', '.join(found[:3])}{' …' if len(found) > 3 else ''}"
    )


def load_scan_report(scan_id: str) -> ScanReport | None:
    """The stored report of scan ``scan_id``, or None if there is no such scan."""
    from ..infra.database import get_engine
    from ..storage import scans
    from ..storage.db import session_scope

    with session_scope(get_engine()) as session:
        return scans.read_report(session, scan_id)


__all__ = [
    "TERMINAL",
    "HostReport",
    "ScanReport",
    "read_progress",
    "load_scan_report",
    "resolve_scan_id",
]
