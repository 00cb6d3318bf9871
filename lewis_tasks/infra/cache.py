"""The Redis cache: JSON values with a TTL under one namespace, and an optional in-process LRU.

What the guide's CacheManager meant, minus its flaws:

- Values are JSON (never pickle: a cache anyone on the network can write must not run code).
- Keys are readable, ``<namespace>:<name>:<arg>:<arg>``; only a long or glob-unsafe argument is
  replaced by a digest, so ``lewis cache invalidate 'vuln:openssh:*'`` means something.
- Invalidation walks the keys with SCAN (KEYS blocks Redis, and with it the broker).
- A dead or slow Redis is a miss, never an exception in the caller: short socket timeouts, no
  retries, the outage logged once (and its end once), and after a failure Redis is left alone
  for ``retry_after`` seconds, so a dead cache costs the callers nothing.
- ``cache.max_memory`` bounds memory in two places. In compose the cache has its own Redis
  with ``maxmemory`` = this value and ``allkeys-lru`` (the broker's Redis must never evict).
  Here, one value may take at most ``max_memory / VALUE_SHARE`` bytes (2 MiB of the default
  512 MB): larger values are not cached, so one huge entry cannot push out thousands of hot
  ones — or fill the broker's ``noeviction`` Redis when the cache shares it (embedded stack).
- The local LRU (``cache.local_lru_size`` entries, 0 = off) serves hot lookups such as the
  vulnerability lookup without a round trip. It keeps encoded JSON, so a caller mutating a
  result cannot corrupt the cache, and its entries live at most ``local_ttl`` seconds: that
  is how stale another process's invalidation can leave this one.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import InvalidInput
from .config import Settings, redact_url
from .runtime import runtime

log = logging.getLogger(__name__)

VALUE_SHARE = 256  # a value may use 1/256 of cache.max_memory: at least 256 of them fit
_MAX_PART = 64  # longer key parts are hashed
_UNSAFE = set("*?[]\\ \t\r\n")  # glob and whitespace characters break pattern invalidation
# Cached CVE lookups (infra/vulnlookup.py): dropped after a feed import (`lewis vulns import`)
VULN_KEYS = "vulns:*"
_MISS: Any = object()

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was created, for metrics."""

    hits: int
    local_hits: int
    misses: int
    writes: int
    skipped_large: int
    errors: int
    available: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_part(value: Any) -> str:
    """One readable key segment for ``value``; a digest when it is long or glob-unsafe."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = json.dumps(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) <= _MAX_PART and not (_UNSAFE & set(text)):
        return text
    return "#" + hashlib.sha256(text.encode()).hexdigest()[:24]


class Cache:
    """A namespaced JSON cache on Redis that degrades to misses when Redis is away."""

    def __init__(
        self,
        url: str | None,
        *,
        namespace: str = "lewis:cache",
        default_ttl: int = 3600,
        max_memory: int = 512 * 1024**2,
        local_size: int = 0,
        local_ttl: float = 10.0,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        enabled: bool = True,
    ) -> None:
        self.namespace = namespace.rstrip(":")
        self.default_ttl = default_ttl
        self.max_value_bytes = max(1, max_memory // VALUE_SHARE)
        self.local_size = local_size
        self.local_ttl = local_ttl
        self.retry_after = retry_after
        self._url = url or ""
        self._client: redis.Redis | None = None
        if enabled and url:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
            )
        self._local: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._down = False
        self._down_until = 0.0
        self._warned: set[str] = set()
        self._counts = dict.fromkeys(
            ("hits", "local_hits", "misses", "writes", "skipped_large", "errors"), 0
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache:
        """The cache the settings describe (its own URL, else the broker's)."""
        c = settings.cache
        return cls(
            settings.cache_url,
            namespace=c.namespace,
            default_ttl=c.default_ttl,
            max_memory=c.max_memory,
            local_size=c.local_lru_size,
            enabled=c.enabled,
        )

    # -- keys --------------------------------------------------------------------------------

    def make_key(self, name: str, *args: Any, **kwargs: Any) -> str:
        """A key (relative to the namespace): ``name:arg:arg:k=v``, readable where possible."""
        parts = [
            name,
            *(key_part(a) for a in args),
            *(f"{k}={key_part(v)}" for k, v in sorted(kwargs.items())),
        ]
        return ":".join(parts)

    def full_key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    # -- reads and writes --------------------------------------------------------------------

    def get(self, key: str, default: Any = None, *, local: bool = False) -> Any:
        """The value at ``key``, or ``default`` on a miss (including when Redis is down)."""
        if local and self.local_size:
            raw = self._local_get(key)
            if raw is not None:
                self._count("local_hits")
                return json.loads(raw)
        raw = self._redis("get", self.full_key(key))
        if raw is None or raw is _MISS:
            self._count("misses")
            return default
        try:
            value = json.loads(raw)
        except ValueError:
            self._warn_once(
                "json",
                f"cache key {self.full_key(key)!r} holds non-JSON data; "
                "treating it (and any like it) as a miss",
            )
            self._count("misses")
            return default
        self._count("hits")
        if local and self.local_size:
            self._local_put(key, raw, self.default_ttl)
        return value

    def set(self, key: str, value: Any, ttl: int | None = None, *, local: bool = False) -> bool:
        """Store JSON ``value`` for ``ttl`` seconds; False if not stored (too large, Redis down).

        A value that is not JSON data is a caller's bug and raises InvalidInput.
        """
        try:
            raw = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"cache key {key!r}: value is not JSON data ({type(value).__name__}: {exc})"
            ) from None
        if len(raw) > self.max_value_bytes:
            self._count("skipped_large")
            log.debug(
                "cache key %s: %d bytes over the per-value cap %d, not cached",
                key,
                len(raw),
                self.max_value_bytes,
            )
            return False
        ttl = ttl or self.default_ttl
        if local and self.local_size:
            self._local_put(key, raw, ttl)
        stored = self._redis("set", self.full_key(key), raw, ex=ttl)
        if stored is _MISS or not stored:
            return False
        self._count("writes")
        return True

    def delete(self, key: str) -> bool:
        """Remove one key (here and in this process's LRU); True if Redis had it."""
        with self._lock:
            self._local.pop(key, None)
        return self._redis("unlink", self.full_key(key)) not in (_MISS, 0)

    def invalidate(self, pattern: str = "*") -> int:
        """Remove every key matching the glob ``pattern`` (relative to the namespace); count.

        Walks with SCAN in batches, so Redis (and the broker on it) never blocks.
        """
        with self._lock:
            for key in [k for k in self._local if fnmatchcase(k, pattern)]:
                del self._local[key]
        client = self._available_client()
        if client is None:
            return 0
        removed = 0
        try:
            batch: list[bytes] = []
            for name in client.scan_iter(match=self.full_key(pattern), count=1000):
                batch.append(name)
                if len(batch) >= 500:
                    removed += int(client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(client.unlink(*batch))
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._recovered()
        return removed

    def cached(
        self,
        ttl: int | None = None,
        key: str | Callable[..., str] | None = None,
        local: bool = False,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorate a function whose result (JSON data) is cached per arguments."""
        return cached(ttl=ttl, key=key, local=local, cache=lambda: self)

    # -- state -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while the cache is disabled or Redis is known to be down."""
        return self._client is not None and not self._down

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._counts, available=self.available)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- internals ---------------------------------------------------------------------------

    def _available_client(self) -> redis.Redis | None:
        if self._client is None:
            return None
        if self._down and time.monotonic() < self._down_until:
            return None  # Redis failed moments ago: do not pay a timeout per call
        return self._client

    def _redis(self, command: str, *args: Any, **kwargs: Any) -> Any:
        client = self._available_client()
        if client is None:
            return _MISS
        try:
            result = getattr(client, command)(*args, **kwargs)
        except redis.ResponseError as exc:  # Redis is up but refused (e.g. OOM): not an outage
            self._warn_once(f"response:{str(exc)[:40]}", f"cache: Redis refused {command}: {exc}")
            self._count("errors")
            return _MISS
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return _MISS
        self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._counts["errors"] += 1
            self._down_until = time.monotonic() + self.retry_after
            if self._down:
                return
            self._down = True
        log.warning(
            "cache unavailable at %s (%s: %s): serving misses until it returns",
            redact_url(self._url),
            type(exc).__name__,
            exc,
        )

    def _recovered(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.info("cache at %s is back", redact_url(self._url))

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning(message)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _local_get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._local.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._local[key]
                return None
            self._local.move_to_end(key)
            return entry[1]

    def _local_put(self, key: str, raw: bytes, ttl: float) -> None:
        with self._lock:
            self._local[key] = (time.monotonic() + min(ttl, self.local_ttl), raw)
            self._local.move_to_end(key)
            while len(self._local) > self.local_size:
                self._local.popitem(last=False)


def cached(
    ttl: int | None = None,
    key: str | Callable[..., str] | None = None,
    local: bool = False,
    cache: Callable[[], Cache] | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Cache a function's JSON result per arguments (the process cache unless ``cache`` given).

    ``key`` is the key's name (default: ``module.qualname``) or a function of the call's
    arguments returning the whole relative key. Arguments are bound to the signature first,
    so ``f(1)`` and ``f(x=1)`` share an entry. JSON turns tuples into lists on a hit.
    """

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        signature = inspect.signature(func)
        name = key if isinstance(key, str) else f"{func.__module__}.{func.__qualname__}"

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            store = (cache or get_cache)()
            if callable(key):
                cache_key = key(*args, **kwargs)
            else:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                cache_key = store.make_key(name, *bound.arguments.values())
            hit = store.get(cache_key, _MISS, local=local)
            if hit is not _MISS:
                return hit
            value = func(*args, **kwargs)
            store.set(cache_key, value, ttl, local=local)
            return value

        return wrapper

    return decorate


def get_cache() -> Cache:
    """This process's cache (the runtime's), built from the settings on first use."""
    return runtime().cache


def reset_cache() -> None:
    """Forget the process's cache (settings changed, tests): the next use builds anew."""
    runtime().forget_cache()


__all__ = [
    "Cache",
    "CacheStats",
    "cached",
    "get_cache",
    "reset_cache",
    "key_part",
    "VALUE_SHARE",
    "VULN_KEYS",
]
