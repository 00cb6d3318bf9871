"""The alert engine: one evaluation per ``alerts.evaluation_interval`` slot, state in Redis.

Layout (prefix ``lewis:alerts``):

* ``:slot`` — the last slot committed; ``:state`` — every live alert (JSON, see
  ``domain/alertstate.py``). An evaluation reads both, evaluates every rule against one
  :class:`Frame` of the metric store, and commits with a compare-and-set (Lua): only if the
  slot it read is still the last one and its own slot is newer. Two beats, a retried task or
  a leader change that evaluate one slot twice commit it once; the loser's transitions and
  notifications are dropped with it.
* ``:outbox`` — transitions committed with the state (same script), moved to the database's
  ``alert_history`` by :func:`drain_outbox` under a lock; a database that is down keeps them
  there for the next tick, so no transition is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from ..domain.alerts import Rule
from ..domain.alertstate import Alert, Evaluation, Transition, advance_all, dump_states, load_states
from ..domain.alertvalues import BLOCK_SLOTS, Frame, SlotData, SparseHist, parse_slot
from ..domain.metrics import slot_of, window_slots
from .metrics_store import MetricStore

log = logging.getLogger(__name__)

PREFIX = "lewis:alerts"
DRAIN_BATCH = 500

# KEYS: slot, state, outbox. ARGV: slot read ('' = none), new slot, state JSON, transitions…
_COMMIT = """
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return 0 end
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
return 1
"""


FRESH_SLOTS = 2  # the newest slots are read again each tick: reporters still write there


class SlotCache:
    """Parsed slots of the metric store kept between ticks: a finished slot is read and
    parsed once per process, so a tick over an hour of data reads the last few slots only.

    A reporter that was cut off from Redis flushes its backlog into older slots; a Redis
    error seen here drops the cache, so the next tick reads everything afresh.
    """

    def __init__(self) -> None:
        self.slots: dict[int, SlotData] = {}
        self.blocks: dict[tuple[Any, ...], Any] = {}  # histogram blocks merged (Frame)
        self.stable_before = -1  # slots before it are final: read once, merged into blocks
        self.parsed: dict[str, tuple[str, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def read(self, store: MetricStore, wanted: range) -> dict[int, SlotData]:
        with self._lock:
            need = [s for s in wanted if s not in self.slots or s >= wanted.stop - FRESH_SLOTS]
            try:
                rows = store.slots(need, histogram=SparseHist.from_fields)
            except redis.RedisError:
                self.slots.clear()
                self.blocks.clear()
                raise
            for slot, counters, hists, gauges in rows:
                self.slots[slot] = parse_slot(counters, hists, gauges, self.parsed)
            oldest = wanted.stop - 1 - int(store.retention // store.interval) - 1
            for old in [s for s in self.slots if s < oldest]:
                del self.slots[old]
            for key in [k for k in self.blocks if (k[0] + 1) * BLOCK_SLOTS <= oldest]:
                del self.blocks[key]
            self.stable_before = wanted.stop - FRESH_SLOTS
            if len(self.parsed) > 100_000:  # label sets churned: start over, never grow
                self.parsed.clear()
            return {s: self.slots[s] for s in wanted}


def slot_cache(store: MetricStore) -> SlotCache:
    """This process' cache for ``store`` (by its Redis address and prefix), in its runtime."""
    from .runtime import runtime

    kw = store.client.connection_pool.connection_kwargs
    key = f"{kw.get('host')}:{kw.get('port')}/{kw.get('db')}{kw.get('path', '')}|{store.prefix}"
    caches = runtime().slot_caches
    cache = caches.get(key)
    if cache is None:
        cache = caches.setdefault(key, SlotCache())
    return cache


@dataclass
class Tick:
    """One evaluation: committed or not, and what it changed."""

    slot: int
    committed: bool
    alerts: dict[str, Alert] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    results: dict[str, Evaluation] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for a in self.alerts.values():
            counts[a.state] = counts.get(a.state, 0) + 1
        return {
            "slot": self.slot,
            "committed": self.committed,
            "reason": self.reason,
            "states": counts,
            "transitions": [t.to_dict() for t in self.transitions],
            "seconds": round(self.seconds, 6),
        }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class AlertEngine:
    """Rules over a metric store, state in the store's Redis."""

    def __init__(
        self,
        store: MetricStore,
        rules: Sequence[Rule],
        interval: float,
        prefix: str = PREFIX,
        cache: SlotCache | None = None,
    ) -> None:
        self.store = store
        self.cache = cache if cache is not None else SlotCache()
        self.client: redis.Redis = store.client
        self.rules = tuple(rules)
        self.interval = float(interval)
        self.prefix = prefix
        self._commit = self.client.register_script(_COMMIT)

    @property
    def keys(self) -> tuple[str, str, str]:
        return f"{self.prefix}:slot", f"{self.prefix}:state", f"{self.prefix}:outbox"

    def load(self) -> tuple[int | None, dict[str, Alert]]:
        """The last committed slot and the alerts as it left them (one atomic read)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys[0])
        pipe.get(self.keys[1])
        slot, state = pipe.execute()
        text = _text(slot)
        return (int(text) if text else None), load_states(state)

    def frame(self, now: float, rules: Sequence[Rule] | None = None) -> Frame:
        """The store's slots for the longest window of ``rules``: finished slots from this
        process' cache, the last few read again."""
        rules = self.rules if rules is None else rules
        longest = max((r.longest_window for r in rules), default=self.store.interval)
        wanted = window_slots(now, longest, self.store.interval)
        slots = self.cache.read(self.store, wanted)
        return Frame(
            slots,
            self.store.kinds(),
            self.store.interval,
            now,
            blocks=self.cache.blocks,
            stable_before=self.cache.stable_before,
        )

    def evaluate(self, now: float, rules: Sequence[Rule] | None = None) -> dict[str, Evaluation]:
        rules = self.rules if rules is None else rules
        frame = self.frame(now, rules)
        return {r.name: frame.evaluate(r) for r in rules}

    def tick(self, slot: int, now: float | None = None) -> Tick:
        """Evaluate ``slot`` (at its start, ``slot × interval``) and commit it unless another
        evaluation already did."""
        began = time.perf_counter()
        now = time.time() if now is None else now
        last, alerts = self.load()
        if last is not None and last >= slot:
            return Tick(slot, False, alerts, reason=f"slot {last} already evaluated")
        results = self.evaluate(now)
        ts = slot * self.interval
        new, moves = advance_all(self.rules, alerts, results, ts)
        ok = self._commit(
            keys=list(self.keys),
            args=[
                "" if last is None else str(last),
                slot,
                dump_states(new),
                *[json.dumps(_jsonable(m.to_dict())) for m in moves],
            ],
        )
        tick = Tick(
            slot,
            bool(ok),
            new if ok else alerts,
            moves if ok else [],
            results,
            time.perf_counter() - began,
            "" if ok else "another evaluation committed first",
        )
        for m in tick.transitions:
            log.info(
                "alert %s %s: %s -> %s (value %s)",
                m.rule,
                m.labels or "",
                m.from_state,
                m.to_state,
                m.value,
            )
        return tick

    def current_slot(self, now: float | None = None) -> int:
        return slot_of(time.time() if now is None else now, self.interval)


def _jsonable(raw: dict[str, Any]) -> dict[str, Any]:
    value = raw.get("value")
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raw = {**raw, "value": None}
    return raw


def drain_outbox(
    client: redis.Redis,
    write: Callable[[list[dict[str, Any]]], int],
    prefix: str = PREFIX,
    lock_seconds: int = 60,
) -> int:
    """Move committed transitions to the database; returns how many were written new.

    One drainer at a time (a lock), the items removed only after ``write`` returned, and
    ``write`` idempotent: a crash between the two writes the same rows again, harmlessly.
    """
    lock = client.lock(f"{prefix}:outbox:lock", timeout=lock_seconds, blocking=False)
    if not lock.acquire():
        return 0
    try:
        new = 0
        while True:
            items = client.lrange(f"{prefix}:outbox", 0, DRAIN_BATCH - 1)
            if not items:
                return new
            new += write([json.loads(i) for i in items])
            client.ltrim(f"{prefix}:outbox", len(items), -1)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # expired: a very slow database
            lock.release()


def engine_from_settings(client: redis.Redis | None = None) -> AlertEngine:
    from .config import get_settings
    from .metrics_store import store_from_settings

    settings = get_settings()
    store = store_from_settings(client)
    return AlertEngine(
        store,
        settings.alerts.all_rules,
        settings.alerts.evaluation_interval,
        cache=slot_cache(store),
    )


def active_alerts(alerts: Mapping[str, Alert]) -> list[Alert]:
    """Pending, firing and nodata alerts, the worst first."""
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    live = [a for a in alerts.values() if a.state in ("pending", "firing", "nodata")]
    return sorted(
        live,
        key=lambda a: (
            {"firing": 0, "nodata": 1, "pending": 2}[a.state],
            order.get(a.severity, 4),
            a.active_at,
            a.fingerprint,
        ),
    )


__all__ = [
    "AlertEngine",
    "Tick",
    "drain_outbox",
    "engine_from_settings",
    "active_alerts",
    "PREFIX",
]
