"""The metric store in Redis: every process writes batches, any process reads statistics.

Layout (prefix ``lewis:metrics``):

* ``:slot:<n>`` — one hash per ``monitoring.metrics_interval`` slot: ``c␟<series>`` counter
  increase, ``g␟<series>`` gauge value, ``h␟<series>␟<bucket|#count|#total|#min|#max>``
  histogram parts. Slots older than ``monitoring.retention`` are deleted by :meth:`prune`
  (listed in the ``:slots`` sorted set) and expire on their own as a backstop.
* ``:total`` — the same counter and histogram fields summed since the store began, for
  Prometheus' monotonic ``_total`` and ``_bucket`` series.
* ``:latest`` — gauge series → ``[value, timestamp]``; ``:kinds`` — metric name → kind;
  ``:series:<name>`` — the admitted label sets, at most ``monitoring.max_label_sets`` (more
  are folded into one ``overflow="true"`` series, so a label with unbounded values cannot
  grow Redis).
* ``:snapshot`` — the collector's last roll-up (JSON), read by ``lewis monitor``.

A batch is applied by one Lua script, atomically: a failed write leaves nothing half-added,
so the reporter can keep the batch and send it again when Redis is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from ..domain.histogram import LatencyHistogram
from ..domain.metrics import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    MetricBatch,
    MetricStats,
    histogram_fields,
    histogram_from_fields,
    overflow_key,
    parse_series,
    parse_window,
    slot_of,
    stats_of_histogram,
    stats_of_samples,
    window_slots,
)
from ..errors import InvalidInput

PREFIX = "lewis:metrics"
SEP = "\x1f"

# KEYS: hashes touched (slot hashes first), then the slot index. ARGV: ttl, number of slot
# keys, their slot numbers, then (op, key index, field, value) quads.
_APPLY = """
local ttl = tonumber(ARGV[1])
local nslots = tonumber(ARGV[2])
local index = KEYS[#KEYS]
for k = 1, nslots do
  redis.call('ZADD', index, tonumber(ARGV[2 + k]), KEYS[k])
end
local i = 3 + nslots
while i <= #ARGV do
  local op, key, f, v = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  if op == '+' then
    redis.call('HINCRBY', key, f, v)
  elseif op == 'f' then
    redis.call('HINCRBYFLOAT', key, f, v)
  elseif op == '=' then
    redis.call('HSET', key, f, v)
  else
    local cur = redis.call('HGET', key, f)
    if (not cur) or (op == '<' and tonumber(v) < tonumber(cur))
        or (op == '>' and tonumber(v) > tonumber(cur)) then
      redis.call('HSET', key, f, v)
    end
  end
  i = i + 4
end
for k = 1, nslots do
  redis.call('EXPIRE', KEYS[k], ttl)
end
return 1
"""

# ARGV: cap, prefix, then (name, series, overflow series) triples → 1 admitted / 0 folded
_ADMIT = """
local cap = tonumber(ARGV[1])
local out = {}
for i = 3, #ARGV, 3 do
  local key = ARGV[2] .. ':series:' .. ARGV[i]
  local s = ARGV[i + 1]
  if redis.call('SISMEMBER', key, s) == 1 then
    out[#out + 1] = 1
  elseif redis.call('SCARD', key) < cap then
    redis.call('SADD', key, s)
    out[#out + 1] = 1
  else
    redis.call('SADD', key, ARGV[i + 2])
    out[#out + 1] = 0
  end
end
return out
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MetricStore:
    """Batches in, statistics out; ``interval``/``retention`` in seconds (settings)."""

    def __init__(
        self,
        client: redis.Redis,
        interval: float,
        retention: float,
        max_label_sets: int,
        prefix: str = PREFIX,
    ) -> None:
        self.client = client
        self.interval = float(interval)
        self.retention = float(retention)
        self.max_label_sets = max_label_sets
        self.prefix = prefix
        self._admitted: dict[str, str] = {}  # series → itself or its overflow series
        self._apply = client.register_script(_APPLY)
        self._admit = client.register_script(_ADMIT)

    # --- keys ------------------------------------------------------------------------------

    def slot_key(self, slot: int) -> str:
        return f"{self.prefix}:slot:{slot}"

    @property
    def _total(self) -> str:
        return f"{self.prefix}:total"

    @property
    def _latest(self) -> str:
        return f"{self.prefix}:latest"

    @property
    def _kinds(self) -> str:
        return f"{self.prefix}:kinds"

    @property
    def _slots(self) -> str:
        return f"{self.prefix}:slots"

    @property
    def _snapshot(self) -> str:
        return f"{self.prefix}:snapshot"

    # --- writing ---------------------------------------------------------------------------

    def admit(self, batch: MetricBatch) -> None:
        """Fold the batch's label sets past the cap into overflow series (one call when new)."""
        new = [s for s in batch.series() if s not in self._admitted]
        if new:
            args: list[Any] = [self.max_label_sets, self.prefix]
            for s in new:
                args += [parse_series(s)[0], s, overflow_key(s)]
            flags = self._admit(args=args)
            for s, ok in zip(new, flags, strict=True):
                self._admitted[s] = s if int(ok) else overflow_key(s)
        mapping = {s: self._admitted[s] for s in batch.series() if self._admitted[s] != s}
        if mapping:
            batch.rename(mapping)

    def write(self, batch: MetricBatch, now: float | None = None) -> None:
        """Apply ``batch`` atomically; RedisError leaves the store as it was."""
        if not batch and not batch.kinds:
            return
        now = time.time() if now is None else now
        self.admit(batch)
        keys: list[str] = []
        key_index: dict[str, int] = {}

        def k(name: str) -> int:
            if name not in key_index:
                keys.append(name)
                key_index[name] = len(keys)
            return key_index[name]

        current = slot_of(now, self.interval)
        slots = sorted(
            {s for s, _ in batch.counters}
            | {s for s, _ in batch.histograms}
            | ({current} if batch.gauges else set())
        )
        for s in slots:
            k(self.slot_key(s))
        ops: list[Any] = []
        total = k(self._total)
        for (slot, series), value in batch.counters.items():
            f = f"c{SEP}{series}"
            ops += ["f", k(self.slot_key(slot)), f, repr(value), "f", total, f, repr(value)]
        for (slot, series), hist in batch.histograms.items():
            base = f"h{SEP}{series}{SEP}"
            for op, suffix, value in histogram_fields(hist):
                ops += [op, k(self.slot_key(slot)), base + suffix, value]
                ops += [op, total, base + suffix, value]
        if batch.gauges:
            latest, slot_hash = k(self._latest), k(self.slot_key(current))
            for series, (value, ts) in batch.gauges.items():
                ops += ["=", slot_hash, f"g{SEP}{series}", repr(value)]
                ops += ["=", latest, series, json.dumps([value, ts])]
        kinds = k(self._kinds)
        for name, kind in batch.kinds.items():
            ops += ["=", kinds, name, kind]
        k(self._slots)  # last: the script finds the slot index at KEYS[#KEYS]
        ttl = int(self.retention + 2 * self.interval)
        self._apply(keys=keys, args=[ttl, len(slots), *slots, *ops])

    def prune(self, now: float | None = None) -> int:
        """Delete slots older than the retention and gauges not refreshed within it."""
        now = time.time() if now is None else now
        cutoff = slot_of(now - self.retention, self.interval)
        old = self.client.zrangebyscore(self._slots, "-inf", f"({cutoff}")
        pipe = self.client.pipeline(transaction=False)
        if old:
            pipe.delete(*old)
            pipe.zremrangebyscore(self._slots, "-inf", f"({cutoff}")
        stale = [s for s, (_, ts) in self.latest().items() if ts < now - self.retention]
        if stale:
            pipe.hdel(self._latest, *stale)
        pipe.execute()
        return len(old) + len(stale)

    def put_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        self.client.set(self._snapshot, json.dumps(snapshot), ex=int(self.retention))

    # --- reading ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        raw = self.client.get(self._snapshot)
        return json.loads(raw) if raw else None

    def kinds(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self._kinds).items()}

    def latest(self) -> dict[str, tuple[float, float]]:
        """Gauge series → (value, timestamp of the write)."""
        out: dict[str, tuple[float, float]] = {}
        for series, raw in self.client.hgetall(self._latest).items():
            value, ts = json.loads(raw)
            out[_text(series)] = (float(value), float(ts))
        return out

    def totals(self) -> tuple[dict[str, float], dict[str, LatencyHistogram]]:
        """Counters and histograms summed since the store began (for Prometheus)."""
        return _parse_hash(self.client.hgetall(self._total))[:2]

    def slots(
        self,
        slots: Iterable[int],
        histogram: Callable[[Mapping[str, Any]], Any] = histogram_from_fields,
    ) -> list[tuple[int, dict[str, float], dict[str, Any], dict[str, float]]]:
        """``(slot, counters, histograms, gauges)`` of each slot, one round trip; each
        histogram built from its hash suffixes by ``histogram`` (a LatencyHistogram)."""
        slots = list(slots)
        pipe = self.client.pipeline(transaction=False)
        for s in slots:
            pipe.hgetall(self.slot_key(s))
        return [
            (s, *_parse_hash(raw, histogram)) for s, raw in zip(slots, pipe.execute(), strict=True)
        ]

    def per_slot(
        self, name: str, slots: Iterable[int], labels: Mapping[str, str] | None = None
    ) -> list[tuple[int, float]]:
        """A counter's increase per slot, summed over the series matching ``labels``."""
        out = []
        for slot, counters, _, _ in self.slots(slots):
            out.append((slot, sum(v for s, v in counters.items() if _matches(s, name, labels))))
        return out

    def stats(
        self,
        name: str,
        window: str | float,
        labels: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> MetricStats:
        """count/sum/min/max/avg/p50/p95/p99 of ``name`` over the last ``window``."""
        seconds = parse_window(window)
        now = time.time() if now is None else now
        kind = self.kinds().get(name)
        if kind is None:
            raise InvalidInput(f"no metric named {name!r} (`lewis metrics` lists them)")
        rows = self.slots(window_slots(now, seconds, self.interval))
        if kind == HISTOGRAM:
            merged = LatencyHistogram.merged(
                h for _, _, hists, _ in rows for s, h in hists.items() if _matches(s, name, labels)
            )
            return stats_of_histogram(name, seconds, merged)
        samples: list[float] = []
        for _, counters, _, gauges in rows:
            source = counters if kind == COUNTER else gauges
            hits = [v for s, v in source.items() if _matches(s, name, labels)]
            if hits:
                samples.append(sum(hits) if kind == COUNTER else max(hits))
        return stats_of_samples(name, kind if kind in (COUNTER, GAUGE) else GAUGE, seconds, samples)

    def key_count(self) -> int:
        """Keys under this store's prefix (tests and `lewis metrics` use it)."""
        return sum(1 for _ in self.client.scan_iter(f"{self.prefix}:*", count=1000))


def _matches(series: str, name: str, labels: Mapping[str, str] | None) -> bool:
    if not series.startswith(f'["{name}"'):
        return False
    if not labels:
        return True
    have = parse_series(series)[1]
    return all(have.get(k) == v for k, v in labels.items())


def _parse_hash(
    raw: Mapping[Any, Any],
    histogram: Callable[[Mapping[str, Any]], Any] = histogram_from_fields,
) -> tuple[dict[str, float], dict[str, Any], dict[str, float]]:
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    parts: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        kind, _, rest = _text(key).partition(SEP)
        if kind == "c":
            counters[rest] = float(value)
        elif kind == "g":
            gauges[rest] = float(value)
        elif kind == "h":
            series, _, suffix = rest.rpartition(SEP)
            parts.setdefault(series, {})[suffix] = value
    return counters, {s: histogram(f) for s, f in parts.items()}, gauges


def store_from_settings(client: redis.Redis | None = None) -> MetricStore:
    """The store on the broker's Redis with the process's monitoring settings."""
    from .config import get_settings
    from .redis_client import get_redis

    m = get_settings().monitoring
    return MetricStore(client or get_redis(), m.metrics_interval, m.retention, m.max_label_sets)


def get_metric_stats(
    name: str, window: str | float = "5m", labels: Mapping[str, str] | None = None
) -> MetricStats:
    """The guide's ``get_metric_stats(name, window)``, answered from Redis by any process."""
    return store_from_settings().stats(name, window, labels)


def recent_runtime_p95(
    name: str, window: str | float = "5m", broker_url: str | None = None
) -> float | None:
    """p95 of task ``name``'s runtime over the last ``window``, from the workers' reports in
    the store on ``broker_url`` (None: the settings' broker); None when it has not run there
    (or the store cannot answer: no measurement)."""
    from .redis_client import get_redis

    try:
        store = store_from_settings(get_redis(broker_url) if broker_url else None)
        stats = store.stats("celery_task_runtime", window, {"name": name})
    except (InvalidInput, redis.RedisError, OSError):
        return None
    return stats.p95 if stats.count else None


__all__ = [
    "recent_runtime_p95",
    "MetricStore",
    "store_from_settings",
    "get_metric_stats",
    "COUNTER",
    "GAUGE",
    "HISTOGRAM",
]
