"""Settings: read once, typed, frozen.

Precedence, lowest first: the defaults below ← a YAML file (``lewis.yaml`` in the working
directory, or the path in ``LEWIS_CONFIG``) ← ``LEWIS_<SECTION>_<KEY>`` environment variables
(``LEWIS_NETWORK_MAX_CONNECTIONS=200``; lists are comma-separated). Section names hold no
underscore, so the first ``_`` after the section splits section from key.

The YAML file may use the guide's layout (a top-level ``performance:`` holding ``cache``,
``database``, ``network``, ``memory``, ``monitoring``); those sub-sections are lifted to the
top level. No other module reads the environment: everything goes through :func:`get_settings`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.cores import usable_cores
from ..domain.redact import redact_url
from ..errors import ConfigError

# ASCII digits only: \d would take '١٢' and int() would read it as 12
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# The largest number any setting takes unless its key says less: no count or duration LEWIS
# uses comes near it, and a timeout far beyond it overflows the OS's timer types (~9.2e9 s).
MAX_NUMBER = 10**9
MAX_SIZE = 2**50  # bytes (1 PiB): sizes are checked against this instead


def parse_size(text: str | int, key: str = "size") -> int:
    """Bytes in ``text`` ("512MB", "2GB", "1048576"); binary multiples, as the guide means."""
    if isinstance(text, bool):
        raise ConfigError(f"setting {key}: expected a size like '512MB', got {text!r}")
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"setting {key}: expected a size like '512MB', got {text!r}")
    unit = (m.group(2) or "").upper().replace("I", "").rstrip("B") or ""
    number = float(m.group(1)) * _SIZE_UNITS[unit]
    if not number <= MAX_SIZE:  # also inf, from a few hundred digits
        raise ConfigError(f"setting {key}: must be ≤ {MAX_SIZE} bytes, got {text!r}")
    return int(number)


def _opt(
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    size: bool = False,
    secret: bool = False,
    schemes: tuple[str, ...] | None = None,
    parse: typing.Callable[[str, Any], Any] | None = None,
    derive: typing.Callable[[Mapping[str, Any]], Any] | None = None,
) -> Any:
    """A setting's field. ``derive``: when the key is not given, its value from the section's
    given keys (e.g. one io worker per core, but never past the given maximum)."""
    meta = {
        "derive": derive,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "size": size,
        "secret": secret,
        "schemes": schemes,
        "parse": parse,
    }
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BrokerSettings:
    # empty: the embedded stack's private redis
    url: str = _opt("", secret=True, schemes=("redis", "rediss"))
    # empty: the broker's Redis
    result_backend: str = _opt("", secret=True, schemes=("redis", "rediss", "unix"))
    # a dead worker's task returns after it, so it must exceed every hard time limit; 0: derived,
    # the longest hard limit + VISIBILITY_MARGIN (390 s by default). Every host must agree.
    visibility_timeout: int = _opt(0, minimum=0)
    pool_limit: int = _opt(10, minimum=1)  # broker_pool_limit
    max_connections: int = _opt(200, minimum=1)  # redis_max_connections (redis-py caps 100)
    result_expires: int = _opt(86400, minimum=1)
    connect_timeout: float = _opt(3.0, minimum=0.1)
    # workers take a message and record it as unacked in one step (infra/transport.py); false:
    # kombu's BRPOP, which loses a message when the worker dies in between (bench A/B)
    atomic_take: bool = _opt(True)
    # the most messages one take brings (within the worker's prefetch); 1: one per round trip
    take_batch: int = _opt(16, minimum=1)
    # a task's SUCCESS stored on the broker's Redis also acks its message, in the same round
    # trip (infra/transport.py Settlements); false: Celery's ack, a round trip of its own
    settle_with_result: bool = _opt(True)


@dataclass(frozen=True)
class PerformanceSettings:
    max_workers: int = _opt(16, minimum=1)  # cap on worker processes the supervisor/scaler runs
    max_concurrent_scans: int = _opt(10, minimum=1)  # scans running at once, cluster-wide
    thread_pool_size: int = _opt(20, minimum=1)  # threads of an io worker on the threads pool


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = _opt(True)
    backend: str = _opt("redis", choices=("redis",))
    # empty: the broker's Redis
    url: str = _opt("", secret=True, schemes=("redis", "rediss", "unix"))
    default_ttl: int = _opt(3600, minimum=1)
    max_memory: int = _opt("512MB", size=True, minimum=1)
    namespace: str = _opt("lewis:cache")
    local_lru_size: int = _opt(4096, minimum=0)  # in-process LRU in front of Redis


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _opt("", secret=True)  # empty: SQLite under the stack home
    # 0: by process role (infra/database.py ROLE_POOLS: io 1+3, cpu child / control / command 1+1);
    # a number sizes every process alike, with max_overflow more opened for bursts
    pool_size: int = _opt(0, minimum=0)
    max_overflow: int = _opt(0, minimum=0)
    pool_timeout: int = _opt(30, minimum=1)
    pool_recycle: int = _opt(3600, minimum=1)
    echo_sql: bool = _opt(False)


@dataclass(frozen=True)
class NetworkSettings:
    connection_timeout: float = _opt(30.0, minimum=0.01)
    read_timeout: float = _opt(60.0, minimum=0.01)
    keep_alive: bool = _opt(True)
    max_connections: int = _opt(100, minimum=1)
    limit_per_host: int = _opt(20, minimum=0)


@dataclass(frozen=True)
class MemorySettings:
    max_heap_size: int = _opt("2GB", size=True, minimum=1)  # cpu children recycled above it
    gc_threshold: float = _opt(0.8, minimum=0.0, maximum=1.0)  # gc.collect past this share
    # allocations between young-generation collections in a worker (Python's default: 700)
    gc_young_threshold: int = _opt(50_000, minimum=100)
    cleanup_interval: int = _opt(300, minimum=1)  # seconds between housekeeping runs


@dataclass(frozen=True)
class MonitoringSettings:
    metrics_interval: int = _opt(10, minimum=1)
    health_check_interval: float = _opt(30.0, minimum=0.1)  # the heartbeat's period
    performance_logging: bool = _opt(True)  # one timed line per finished task
    ping_timeout: float = _opt(2.0, minimum=0.05)
    retention: int = _opt(3600, minimum=60)  # seconds heartbeats and metrics are kept (guide: 1 h)
    # --- metrics (issue 14): the worker reporters, the collector and `lewis monitor`
    reporting: bool = _opt(True)  # false: workers and producers count nothing (bench A/B)
    report_interval: float = _opt(2.0, minimum=0.1)  # seconds between a reporter's Redis writes
    max_label_sets: int = _opt(2000, minimum=1)  # label sets per metric; more fold into one
    monitor_port: int = _opt(0, minimum=0, maximum=65535)  # `lewis monitor`/`lewis up`; 0: free
    monitor_address: str = _opt("127.0.0.1")  # widen only behind a proxy with auth


@dataclass(frozen=True)
class ScopeSettings:
    allow: tuple[str, ...] = _opt(["127.0.0.0/8", "::1", "localhost"])


@dataclass(frozen=True)
class WorkersSettings:
    io_pool: str = _opt("threads", choices=("threads", "prefork", "solo"))
    io_concurrency: int = _opt(0, minimum=0)  # 0: cores (prefork) / thread_pool_size (threads)
    io_prefetch_multiplier: int = _opt(1, minimum=1)  # long tasks: no hoarding (DESIGN)
    cpu_concurrency: int = _opt(0, minimum=0)  # 0: cores
    cpu_max_tasks_per_child: int = _opt(1000, minimum=1)  # memory recycling does the rest
    control_concurrency: int = _opt(1, minimum=1)
    shutdown_timeout: float = _opt(10.0, minimum=0.0)  # soft shutdown (drain) seconds


@dataclass(frozen=True)
class TasksSettings:
    soft_time_limit: int = _opt(300, minimum=1)
    time_limit: int = _opt(360, minimum=1)
    max_redeliveries: int = _opt(3, minimum=0)
    retry_backoff_max: int = _opt(60, minimum=1)
    max_retries: int = _opt(3, minimum=0)


@dataclass(frozen=True)
class ScanSettings:
    max_hosts: int = _opt(4096, minimum=1)  # hosts one CIDR may expand to
    max_ports_total: int = _opt(1_048_576, minimum=1)  # hosts × ports in one scan
    chunk_ports: int = _opt(8192, minimum=1)  # ports per chunk task
    concurrency: int = _opt(4096, minimum=1)  # connects in flight per process
    timeout: float = _opt(1.0, minimum=0.01)  # per connect
    retries: int = _opt(1, minimum=0)  # re-tries of a timed-out connect
    banner_timeout: float = _opt(2.0, minimum=0.01)
    # open ports identified at once per chunk: silent ports each wait out the banner and probe
    # timeouts, so 64 at a time made 200 silent listeners take 4 rounds (~16 s)
    identify_concurrency: int = _opt(256, minimum=1)
    max_rate: int = _opt(0, minimum=0)  # default connections/s per host, 0: unlimited


@dataclass(frozen=True)
class HttpSettings:
    max_urls: int = _opt(100_000, minimum=1)
    chunk_size: int = _opt(2000, minimum=1)
    max_body_bytes: int = _opt("1MB", size=True, minimum=1)
    max_redirects: int = _opt(5, minimum=0)
    retries: int = _opt(2, minimum=0)
    # one URL's whole budget (connection wait, redirects, retries, body): a stalling server
    # costs at most this, and chunks are sized so their worst case fits tasks.soft_time_limit
    timeout: float = _opt(30.0, minimum=0.1)
    # characters; a longer URL (or redirect target) is a per-URL invalid_url, never fetched
    max_url_length: int = _opt(8192, minimum=1)
    # true: one helper process per io process stores a batch's per-URL rows (infra/rowwriter.py)
    # and the io process only fetches — faster when a core is spare beside each io process,
    # slower when io processes fill the cores (BENCHMARKS.md); false: the io process stores them
    row_writer: bool = _opt(False)


@dataclass(frozen=True)
class LoadtestSettings:
    max_duration: float = _opt(60.0, minimum=0.1)
    max_concurrency: int = _opt(1000, minimum=1)
    max_rate: int = _opt(100_000, minimum=1)
    max_requests: int = _opt(5_000_000, minimum=1)
    max_workers: int = _opt(16, minimum=1)
    max_body_bytes: int = _opt("64KB", size=True, minimum=1)  # a request body sent by the run
    # how long the parts of a distributed run wait for each other at the start barrier; the
    # part's time limit covers it, so it also bounds max_duration below the visibility timeout
    barrier_timeout: float = _opt(20.0, minimum=1.0)


@dataclass(frozen=True)
class ProfilingSettings:
    max_seconds: float = _opt(60.0, minimum=0.1)
    top_n: int = _opt(25, minimum=1)
    max_iterations: int = _opt(100_000, minimum=1)
    max_concurrent: int = _opt(64, minimum=1)


@dataclass(frozen=True)
class StackSettings:
    home: str = _opt(".lewis")  # where the embedded stack keeps redis data, sqlite, stack.json
    flower_port: int = _opt(0, minimum=0, maximum=65535)  # 0: a free port
    flower_user: str = _opt("")
    flower_password: str = _opt("", secret=True)
    # a dead beat's lease expires after at most this (and at most the shortest job interval)
    beat_lock_timeout: int = _opt(15, minimum=2)


ACTUATORS = ("auto", "dryrun", "local", "celery", "kubernetes")
SCALED_QUEUES = ("io", "cpu")  # control is never scaled: one small worker, never behind a backlog


IO_MAX_WORKERS = max(4, usable_cores())


def _io_workers_per_core(given: Mapping[str, Any]) -> int:
    """scaling.io_min_workers when not set: one io worker per usable core (an io worker's
    event loop uses one core: a full-range scan is CPU-bound on loopback), within
    io_max_workers."""
    return min(usable_cores(), given.get("io_max_workers", IO_MAX_WORKERS))


@dataclass(frozen=True)
class ScalingSettings:
    """The scaling decision job (issue 16): per queue bounds and targets, window, actuator."""

    enabled: bool = _opt(True)
    interval: float = _opt(15.0, minimum=1.0)  # seconds between decisions (HPA's loop: 15 s)
    # auto: local when a `lewis up` supervisor listens on the broker, else dryrun
    actuator: str = _opt("auto", choices=ACTUATORS)
    stabilization_window: float = _opt(300.0, minimum=0.0)  # seconds a scale-down waits (HPA)
    tolerance: float = _opt(0.1, minimum=0.0, maximum=1.0)  # HPA's: no change this near target
    # with a queue's min_workers 0: load at or below this keeps (or puts) its pool at zero
    activation_threshold: int = _opt(0, minimum=0)
    # default: one per core (`lewis up` starts them all), within io_max_workers
    io_min_workers: int = _opt(_io_workers_per_core({}), minimum=0, derive=_io_workers_per_core)
    io_max_workers: int = _opt(IO_MAX_WORKERS, minimum=1)  # default: 4, or one per core if more
    io_target_per_worker: float = _opt(20.0, minimum=0.01)  # ready+unacked per io worker
    cpu_min_workers: int = _opt(1, minimum=0)
    cpu_max_workers: int = _opt(2, minimum=1)
    cpu_target_per_worker: float = _opt(4.0, minimum=0.01)
    kubernetes_namespace: str = _opt("lewis")
    kubernetes_io_deployment: str = _opt("lewis-worker-io")
    kubernetes_cpu_deployment: str = _opt("lewis-worker-cpu")
    kubeconfig: str = _opt("")  # empty: the in-cluster service account
    kubernetes_timeout: float = _opt(5.0, minimum=0.1)  # seconds per API request


def _structured(key: str, raw: Any) -> Any:
    """YAML data as given, or JSON text from the environment."""
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"setting {key}: expected JSON in the environment ({exc})") from None
    return raw


def _alert_rules(key: str, raw: Any) -> tuple[Any, ...]:
    from ..domain.alerts import parse_rules
    from ..errors import InvalidInput

    raw = _structured(key, raw)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"setting {key}: expected a list of rules, got {raw!r}"[:200])
    try:
        return parse_rules(raw)
    except InvalidInput as exc:
        raise ConfigError(f"setting {key}: {exc}") from None


def _thresholds(key: str, raw: Any) -> tuple[tuple[str, Any], ...]:
    raw = _structured(key, raw)
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"setting {key}: expected a mapping like {{cpu_usage: 85}}, got {raw!r}")
    return tuple(sorted((str(k), v) for k, v in raw.items()))


@dataclass(frozen=True)
class AlertsSettings:
    """Alerting (issue 15): rules evaluated by beat, notifications off the evaluation path."""

    evaluation_interval: int = _opt(15, minimum=1)  # seconds between evaluations (beat slots)
    # the operator's rules (README "Alerting"); a same-named default is replaced by one here
    rules: tuple[Any, ...] = _opt([], parse=_alert_rules)
    default_rules: bool = _opt(True)  # the guide's five and celery-exporter's three, + one
    # the guide's alert_thresholds names (cpu_usage, memory_usage, disk_usage, response_time,
    # error_rate) over the default rules' thresholds
    thresholds: tuple[Any, ...] = _opt([], parse=_thresholds)
    alertmanager_url: str = _opt("", secret=True, schemes=("http", "https"))  # pushed to
    webhook_url: str = _opt("", secret=True, schemes=("http", "https"))  # Alertmanager's format
    log: bool = _opt(True)  # one log line per notification (the control worker's log)
    group_by: tuple[str, ...] = _opt(["alertname"])  # one notification per group
    repeat_interval: int = _opt(14400, minimum=1)  # seconds before a group is sent again (4 h)
    # seconds between pushes of a firing alert to Alertmanager (Prometheus' resend delay)
    resend_delay: int = _opt(60, minimum=1)
    notify_timeout: float = _opt(5.0, minimum=0.1)  # per HTTP request
    notify_retries: int = _opt(5, minimum=0)  # of a failed notification, with backoff
    external_url: str = _opt("http://127.0.0.1")  # generatorURL's base (the monitor's URL)
    history_retention: int = _opt(30 * 86400, minimum=3600)  # seconds alert_history is kept

    @property
    def all_rules(self) -> tuple[Any, ...]:
        """The defaults (unless turned off, with the guide's thresholds) and the operator's."""
        from ..domain.alerts import default_rules, merge_rules
        from ..errors import InvalidInput

        if not self.default_rules:
            return self.rules
        try:
            return merge_rules(default_rules(dict(self.thresholds)), self.rules)
        except InvalidInput as exc:
            raise ConfigError(f"setting alerts.thresholds: {exc}") from None


@dataclass(frozen=True)
class Settings:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    scope: ScopeSettings = field(default_factory=ScopeSettings)
    workers: WorkersSettings = field(default_factory=WorkersSettings)
    tasks: TasksSettings = field(default_factory=TasksSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    loadtest: LoadtestSettings = field(default_factory=LoadtestSettings)
    profiling: ProfilingSettings = field(default_factory=ProfilingSettings)
    stack: StackSettings = field(default_factory=StackSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    alerts: AlertsSettings = field(default_factory=AlertsSettings)

    @property
    def home(self) -> Path:
        return Path(self.stack.home).expanduser().resolve()

    @property
    def result_backend(self) -> str:
        return self.broker.result_backend or self.broker.url

    @property
    def cache_url(self) -> str:
        return self.cache.url or self.broker.url

    def redacted(self) -> dict[str, Any]:
        """Every setting as plain data, secrets and URL passwords masked, for logs and `lewis config`."""
        out: dict[str, Any] = {}
        for sec in dataclasses.fields(self):
            obj = getattr(self, sec.name)
            out[sec.name] = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if f.metadata.get("secret") and value:
                    value = redact_url(value) if "://" in str(value) else "***"
                if isinstance(value, tuple):
                    value = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
                out[sec.name][f.name] = value
        return out


_HINTS = typing.get_type_hints(Settings)
SECTIONS: dict[str, type] = {f.name: _HINTS[f.name] for f in dataclasses.fields(Settings)}
_GUIDE_NESTED = ("cache", "database", "network", "memory", "monitoring")
# each section's fields and resolved type hints, once (get_type_hints was 3/4 of a load)
_SECTION_FIELDS: dict[str, tuple[dict[str, dataclasses.Field[Any]], dict[str, Any]]] = {
    name: ({f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls))
    for name, cls in SECTIONS.items()
}


def _coerce(key: str, f: dataclasses.Field[Any], hint: Any, raw: Any) -> Any:
    meta = f.metadata
    if meta.get("parse"):
        return meta["parse"](key, raw)
    if meta.get("size"):
        value: Any = parse_size(raw, key)
    elif hint is bool:
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
            value = True
        elif isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off", ""):
            value = False
        else:
            raise ConfigError(f"setting {key}: expected true or false, got {raw!r}")
    elif hint in (int, float):
        value = _number(key, hint, raw)
    elif hint is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"setting {key}: expected a string, got {raw!r}")
        value = str(raw)
        if "\x00" in value:  # no path, URL or name holds one (os calls raise ValueError)
            raise ConfigError(f"setting {key}: contains a NUL character, got {raw!r}")
    elif typing.get_origin(hint) is tuple:
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"setting {key}: expected a list of strings, got {raw!r}")
        value = tuple(raw)
    else:  # pragma: no cover - a field type this loader does not know is a bug here
        raise ConfigError(f"setting {key}: unsupported type {hint!r}")
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if hi is None and isinstance(value, (int, float)) and not isinstance(value, bool):
        hi = MAX_SIZE if meta.get("size") else MAX_NUMBER
    if lo is not None and value < lo:
        raise ConfigError(f"setting {key}: must be ≥ {lo}, got {raw!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"setting {key}: must be ≤ {hi}, got {raw!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"setting {key}: must be one of {', '.join(choices)}, got {raw!r}")
    schemes = meta.get("schemes")
    if schemes and value:
        _check_scheme(key, value, schemes)
    return value


def _number(key: str, hint: type, raw: Any) -> int | float:
    """An int or a finite float from YAML or environment text; never NaN, inf or '١٢'."""
    what = "an integer" if hint is int else "a number"
    allowed: tuple[type, ...] = (int, str) if hint is int else (int, float, str)
    # int() and float() read any Unicode digits ('١٢' is 12): only ASCII text is a number here
    if (
        isinstance(raw, bool)
        or not isinstance(raw, allowed)
        or (isinstance(raw, str) and not raw.isascii())
    ):
        raise ConfigError(f"setting {key}: expected {what}, got {raw!r}")
    try:
        value = hint(raw)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise ConfigError(f"setting {key}: expected {what}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        # NaN compares false with every bound, so it would pass them all
        raise ConfigError(f"setting {key}: expected a finite number, got {raw!r}")
    return value


def _check_scheme(key: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        kind = "an HTTP" if "http" in schemes else "a Redis"
        raise ConfigError(
            f"setting {key}: {redact_url(url)!r} is not {kind} URL "
            f"(expected {' or '.join(s + '://' for s in schemes)})"
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
            f"at offset {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"config file {path}: nested too deeply to be settings") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    perf = data.get("performance")
    if isinstance(perf, dict):  # the guide's layout: lift nested sections to the top
        perf = dict(perf)
        for name in _GUIDE_NESTED:
            if name in perf:
                nested = perf.pop(name)
                top = data.get(name) or {}
                if not isinstance(nested, dict):
                    raise ConfigError(f"setting performance.{name}: expected a mapping")
                if not isinstance(top, dict):
                    raise ConfigError(f"setting {name}: expected a mapping, got {top!r}")
                data[name] = {**nested, **top}
        if "alerting" in perf:  # the guide's alerting block is our `alerts` section
            nested = perf.pop("alerting")
            if not isinstance(nested, dict):
                raise ConfigError("setting performance.alerting: expected a mapping")
            data["alerts"] = {**nested, **(data.get("alerts") or {})}
        data["performance"] = perf
    return data


def _env_layer(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    # not settings: the file's path, the test suite's services and processes (scripts/test),
    # the set-up script's own knobs (scripts/_venv.sh: where the venv lives, which extras)
    skip = {
        "LEWIS_CONFIG",
        "LEWIS_TEST_REDIS_URL",
        "LEWIS_TEST_DATABASE_URL",
        "LEWIS_TEST_PROCESSES",
        "LEWIS_VENV",
        "LEWIS_EXTRAS",
    }
    for name, value in env.items():
        if not name.startswith("LEWIS_") or name in skip:
            continue
        rest = name[len("LEWIS_") :].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS or not key:
            raise ConfigError(
                f"environment {name}: unknown setting (sections: {', '.join(SECTIONS)})"
            )
        if key.endswith("_file") and key not in _SECTION_FIELDS[section][0]:
            key, value = _from_file(env, name, section, key.removesuffix("_file"), value)
        layer.setdefault(section, {})[key] = value
    return layer


def _from_file(
    env: Mapping[str, str], name: str, section: str, key: str, path: str
) -> tuple[str, str]:
    """``LEWIS_<SECTION>_<KEY>_FILE=path``: the value of a secret setting read from a file
    (Docker and Kubernetes secrets), its one trailing newline dropped."""
    field = _SECTION_FIELDS[section][0].get(key)
    if field is None or not field.metadata.get("secret"):
        raise ConfigError(
            f"environment {name}: only secret settings are read from files "
            f"({section}.{key} is not one)"
        )
    plain = name.removesuffix("_FILE")
    if plain in env:
        raise ConfigError(f"environment {name}: {plain} is set too; set one of them")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"environment {name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return key, text.removesuffix("\n").removesuffix("\r")


def load_settings(
    env: Mapping[str, str] | None = None,
    path: str | Path | None = None,
    cwd: str | Path | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, the YAML file and the environment; raise ConfigError."""
    env = os.environ if env is None else env
    base = Path(cwd) if cwd else Path.cwd()
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is None and env.get("LEWIS_CONFIG"):
        path = env["LEWIS_CONFIG"]
    if path is not None:
        layers.append((str(path), _read_yaml(base / Path(path))))
    elif (base / "lewis.yaml").is_file():
        layers.append(("lewis.yaml", _read_yaml(base / "lewis.yaml")))
    layers.append(("environment", _env_layer(env)))

    merged: dict[str, dict[str, Any]] = {}
    for origin, layer in layers:
        for section, values in layer.items():
            if section not in SECTIONS:
                raise ConfigError(
                    f"{origin}: unknown section {section!r} (sections: {', '.join(SECTIONS)})"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"setting {section}: expected a mapping, got {values!r}")
            merged.setdefault(section, {}).update(values)

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        fields, hints = _SECTION_FIELDS[section]
        kwargs: dict[str, Any] = {}
        for key, raw in merged.get(section, {}).items():
            if key not in fields:
                raise ConfigError(
                    f"setting {section}.{key}: unknown key (known: {', '.join(fields)})"
                )
            kwargs[key] = _coerce(f"{section}.{key}", fields[key], hints[key], raw)
        given = dict(kwargs)
        for name, f in fields.items():  # size defaults are written as text
            if name not in kwargs and f.metadata.get("size") and isinstance(f.default, str):
                kwargs[name] = parse_size(f.default, f"{section}.{name}")
            if name not in given and f.metadata.get("derive"):
                kwargs[name] = f.metadata["derive"](given)
        built[section] = cls(**kwargs)
    settings = Settings(**built)
    return _resolve(settings, base)


def _resolve(settings: Settings, base: Path) -> Settings:
    """Fill what the embedded stack provides: its broker (from stack.json) and SQLite file."""
    home = Path(settings.stack.home).expanduser()
    if not home.is_absolute():
        home = (base / home).resolve()
    stack = replace_section(settings, "stack", home=str(home))
    broker, database = stack.broker, stack.database
    if not broker.url:
        info = read_stack_file(home)
        if info and info.get("broker_url"):
            broker = dataclasses.replace(broker, url=info["broker_url"])
    if not database.url:
        database = dataclasses.replace(database, url=f"sqlite:///{home / 'lewis.db'}")
    if settings.monitoring.ping_timeout >= settings.monitoring.health_check_interval:
        # a heartbeat waits out its ping; longer than its period, heartbeats would pile up
        raise ConfigError(
            "setting monitoring.ping_timeout: must be shorter than "
            f"monitoring.health_check_interval ({settings.monitoring.ping_timeout} >= "
            f"{settings.monitoring.health_check_interval})"
        )
    _check_monitoring(settings.monitoring)
    _check_scaling(settings.scaling)
    _refuse_placeholders(settings)
    settings.alerts.all_rules  # noqa: B018  (bad thresholds stop here, not at the first tick)
    if settings.tasks.soft_time_limit > settings.tasks.time_limit:
        raise ConfigError(
            "setting tasks.soft_time_limit: must not exceed tasks.time_limit "
            f"({settings.tasks.soft_time_limit} > {settings.tasks.time_limit})"
        )
    if not broker.visibility_timeout:
        broker = dataclasses.replace(
            broker, visibility_timeout=derived_visibility_timeout(settings)
        )
    return dataclasses.replace(stack, broker=broker, database=database)


# The passwords docker/env.example ships with: a stack started on them is open to anyone who
# read the example, so every command refuses them.
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme"})


def _refuse_placeholders(settings: Settings) -> None:
    for section, (fields, _) in _SECTION_FIELDS.items():
        for key, f in fields.items():
            value = getattr(getattr(settings, section), key)
            if f.metadata.get("secret") and isinstance(value, str) and _placeholder(value):
                raise ConfigError(
                    f"setting {section}.{key}: holds the example's placeholder "
                    "password; set a real secret (docker/env.example)"
                )


def _placeholder(value: str) -> bool:
    """The value, or the password inside a URL, is one of the example's placeholders."""
    from urllib.parse import unquote, urlsplit

    password = urlsplit(value).password if "://" in value else value
    return password is not None and unquote(password).lower() in PLACEHOLDER_SECRETS


# A load-test part's hard limit beyond its run and barrier (planning.py: BARRIER_LEAD + DRAIN
# + SLACK + HARD_GAP = 12.5 s), and the room left after the longest hard limit before a
# message is handed out again (the kill, the ack and a loaded machine's delays).
LOADTEST_PART_OVERHEAD = 12.5
VISIBILITY_MARGIN = 30


def derived_visibility_timeout(settings: Settings) -> int:
    """The shortest safe visibility timeout: the longest hard time limit any task gets
    (``tasks.time_limit``, or a load-test part of ``loadtest.max_duration``) + the margin.

    A host that dies holding tasks has them redelivered after this, not after a fixed 600 s.
    """
    lt = settings.loadtest
    part = math.ceil(lt.barrier_timeout + lt.max_duration + LOADTEST_PART_OVERHEAD)
    return min(MAX_NUMBER, max(settings.tasks.time_limit, part) + VISIBILITY_MARGIN)


def _check_monitoring(m: MonitoringSettings) -> None:
    """Metric settings that only make sense together (issue 14)."""
    if m.retention < 2 * m.metrics_interval:
        raise ConfigError(
            f"setting monitoring.retention: must hold two metrics intervals "
            f"(≥ {2 * m.metrics_interval}s), got {m.retention}"
        )
    if m.report_interval > m.metrics_interval:
        raise ConfigError(
            f"setting monitoring.report_interval: must not exceed "
            f"monitoring.metrics_interval ({m.report_interval} > {m.metrics_interval})"
        )


def _check_scaling(s: ScalingSettings) -> None:
    for queue in SCALED_QUEUES:
        lo, hi = getattr(s, f"{queue}_min_workers"), getattr(s, f"{queue}_max_workers")
        if lo > hi:
            raise ConfigError(
                f"setting scaling.{queue}_min_workers: must not exceed "
                f"scaling.{queue}_max_workers ({lo} > {hi})"
            )


def replace_section(settings: Settings, section: str, **changes: Any) -> Settings:
    """A copy of ``settings`` with some keys of one section changed (settings are frozen)."""
    return dataclasses.replace(
        settings, **{section: dataclasses.replace(getattr(settings, section), **changes)}
    )


def stack_file(home: Path) -> Path:
    return home / "stack.json"


def read_stack_file(home: Path) -> dict[str, Any] | None:
    """What a running ``lewis up`` wrote about itself, or None."""
    try:
        data = json.loads(stack_file(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, loaded on first use."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def set_settings(settings: Settings | None) -> None:
    """Install (or with None, forget) the process's settings; tests and the CLI use it."""
    global _settings
    _settings = settings


__all__ = [
    "Settings",
    "load_settings",
    "get_settings",
    "set_settings",
    "parse_size",
    "redact_url",
    "replace_section",
    "read_stack_file",
    "stack_file",
]
