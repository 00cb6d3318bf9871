"""The Redis cache: JSON values, namespaced readable keys, SCAN invalidation, a size cap, a
local LRU, and outages that are misses (logged once) until Redis comes back."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lewis_tasks.errors import InvalidInput
from lewis_tasks.infra.cache import VALUE_SHARE, Cache, cached, key_part
from lewis_tasks.infra.config import load_settings
from lewis_tasks.infra.redis_server import EmbeddedRedis


@pytest.fixture
def cache(redis_client: redis.Redis, redis_url: str) -> Iterator[Cache]:
    c = Cache(redis_url, namespace="t:cache", default_ttl=600, local_size=0)
    yield c
    c.close()


def test_values_are_stored_as_json_under_the_namespace_with_a_ttl(
    cache: Cache, redis_client: redis.Redis
) -> None:
    value = {"cve": ["CVE-2024-6387"], "score": 8.1, "ok": True, "none": None}
    assert cache.set("vuln:openssh:9.6", value)
    assert cache.get("vuln:openssh:9.6") == value
    raw = redis_client.get("t:cache:vuln:openssh:9.6")
    assert raw is not None and json.loads(raw) == value  # plain JSON, never pickle
    assert 590 <= redis_client.ttl("t:cache:vuln:openssh:9.6") <= 600
    cache.set("short", 1, ttl=5)
    assert redis_client.ttl("t:cache:short") <= 5
    assert cache.get("absent") is None and cache.get("absent", "dflt") == "dflt"


def test_non_json_values_are_a_callers_bug(cache: Cache) -> None:
    with pytest.raises(InvalidInput, match="'k': value is not JSON data \\(set"):
        cache.set("k", {1, 2})
    with pytest.raises(InvalidInput, match="not JSON"):
        cache.set("k", float("nan"))


def test_keys_are_readable_and_hash_only_long_or_unsafe_parts(cache: Cache) -> None:
    assert cache.make_key("vuln", "openssh", "9.6", 22, None) == "vuln:openssh:9.6:22:null"
    assert cache.make_key("f", port=80, host="::1") == "f:host=::1:port=80"
    long = "x" * 65
    assert key_part(long).startswith("#") and len(key_part(long)) == 25
    assert key_part("a*b").startswith("#") and key_part("a b").startswith("#")
    assert key_part({"b": 1}) == '{"b":1}' and key_part(["b"]).startswith("#")  # [ is glob
    assert key_part(long) == key_part(long) and key_part(long) != key_part(long + "y")


def test_invalidate_by_pattern_uses_scan_and_stays_in_the_namespace(
    cache: Cache, redis_client: redis.Redis, redis_url: str
) -> None:
    other = Cache(redis_url, namespace="other")
    for i in range(1200):
        cache.set(f"vuln:openssh:{i}", i)
    cache.set("vuln:redis:7", 7)
    other.set("vuln:openssh:1", "keep")
    redis_client.config_resetstat()
    assert cache.invalidate("vuln:openssh:*") == 1200
    stats = redis_client.info("commandstats")
    assert "cmdstat_scan" in stats and "cmdstat_keys" not in stats
    assert cache.get("vuln:redis:7") == 7 and other.get("vuln:openssh:1") == "keep"
    assert cache.invalidate() == 1 and cache.get("vuln:redis:7") is None
    other.close()


def test_decorator_caches_per_bound_arguments(cache: Cache, redis_client: redis.Redis) -> None:
    calls: list[tuple[Any, ...]] = []

    @cache.cached(ttl=30, key="lookup")
    def lookup(product: str, version: str = "any") -> dict[str, Any] | None:
        calls.append((product, version))
        return None if product == "nothing" else {"product": product, "version": version}

    assert lookup("openssh") == {"product": "openssh", "version": "any"}
    assert lookup(product="openssh", version="any") == {"product": "openssh", "version": "any"}
    assert lookup("nothing") is None and lookup("nothing") is None  # None is cached too
    assert calls == [("openssh", "any"), ("nothing", "any")]
    assert redis_client.ttl("t:cache:lookup:openssh:any") <= 30

    @cache.cached(key=lambda host, port: f"banner:{host}:{port}")
    def banner(host: str, port: int) -> str:
        calls.append((host, port))
        return "SSH-2.0-OpenSSH_9.6"

    banner("127.0.0.1", 22)
    banner("127.0.0.1", 22)
    assert calls[-1] == ("127.0.0.1", 22) and len(calls) == 3
    assert redis_client.exists("t:cache:banner:127.0.0.1:22")


def test_values_over_the_memory_share_are_not_cached(
    redis_client: redis.Redis, redis_url: str
) -> None:
    cache = Cache(redis_url, namespace="t:cache", max_memory=VALUE_SHARE * 100)
    assert cache.max_value_bytes == 100
    assert cache.set("small", "x" * 50)
    assert not cache.set("big", "x" * 200)
    assert cache.get("big") is None and not redis_client.exists("t:cache:big")
    assert cache.stats().skipped_large == 1


def test_local_lru_serves_hot_keys_and_keeps_its_own_copy(
    redis_client: redis.Redis, redis_url: str
) -> None:
    cache = Cache(redis_url, namespace="t:cache", local_size=2, local_ttl=3600)
    cache.set("a", {"v": [1]}, local=True)
    redis_client.delete("t:cache:a")  # gone from Redis: only the local copy can answer
    first = cache.get("a", local=True)
    assert first == {"v": [1]}
    first["v"].append(2)  # a caller mutating its result must not change the cache
    assert cache.get("a", local=True) == {"v": [1]}
    assert cache.get("a") is None  # without local=True, Redis is the truth
    cache.set("b", 2, local=True)
    cache.set("c", 3, local=True)  # evicts "a", the least recently used
    redis_client.flushdb()
    assert cache.get("a", local=True) is None
    assert (cache.get("b", local=True), cache.get("c", local=True)) == (2, 3)
    assert cache.stats().local_hits == 4
    cache.invalidate("b")  # invalidation clears this process's copy too
    assert cache.get("b", local=True) is None


def test_local_entries_expire_after_local_ttl(redis_client: redis.Redis, redis_url: str) -> None:
    cache = Cache(redis_url, namespace="t:cache", local_size=10, local_ttl=0)
    cache.set("k", "redis-copy", local=True)
    redis_client.set("t:cache:k", json.dumps("changed elsewhere"))
    assert cache.get("k", local=True) == "changed elsewhere"


def test_disabled_or_unconfigured_cache_is_always_a_miss(redis_url: str) -> None:
    calls: list[int] = []
    for cache in (Cache(redis_url, enabled=False), Cache(None), Cache("")):
        assert not cache.set("k", 1) and cache.get("k") is None and cache.invalidate() == 0
        assert not cache.available

        @cache.cached()
        def f(x: int) -> int:
            calls.append(x)
            return x * 2

        calls.clear()
        assert f(2) == 4 and f(2) == 4 and calls == [2, 2]


def test_from_settings_reads_the_cache_section(redis_url: str) -> None:
    settings = load_settings(
        env={
            "LEWIS_BROKER_URL": redis_url,
            "LEWIS_CACHE_NAMESPACE": "ns",
            "LEWIS_CACHE_DEFAULT_TTL": "42",
            "LEWIS_CACHE_MAX_MEMORY": "1MB",
            "LEWIS_CACHE_LOCAL_LRU_SIZE": "7",
        }
    )
    cache = Cache.from_settings(settings)
    assert (cache.namespace, cache.default_ttl, cache.local_size) == ("ns", 42, 7)
    assert cache.max_value_bytes == 1024**2 // VALUE_SHARE
    assert cache.available
    cache.close()


def test_module_level_decorator_uses_the_process_cache(
    redis_client: redis.Redis, redis_url: str
) -> None:
    mine = Cache(redis_url, namespace="t:cache")

    @cached(key="sq", cache=lambda: mine)
    def square(x: int) -> int:
        return x * x

    assert square(3) == 9 and redis_client.get("t:cache:sq:3") == b"9"


# -- outages -----------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private Redis this test may stop and restart (AOF on, so data survives a restart)."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


def test_outage_is_a_miss_logged_once_and_the_cache_recovers(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lewis_tasks.infra.cache")
    cache = Cache(own_redis.url, namespace="t", retry_after=0)
    calls: list[int] = []

    @cache.cached(key="double")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert cache.set("kept", "before") and double(1) == 2
    # When Redis goes away mid-test
    own_redis.stop()
    # Then every call is a miss or a no-op, never an exception
    for _ in range(5):
        assert cache.get("kept") is None
        assert cache.set("during", 1) is False
        assert cache.delete("kept") is False
        assert cache.invalidate("*") == 0
        assert double(2) == 4
    assert calls == [1, 2, 2, 2, 2, 2] and not cache.available
    outages = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outages) == 1 and outages[0].levelno == logging.WARNING
    # When Redis returns on the same port
    own_redis.start()
    # Then the cache answers again (the AOF kept what was written before)
    assert cache.get("kept") == "before"
    assert double(1) == 2 and calls.count(1) == 1
    assert cache.available
    assert [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    assert "unavailable" not in caplog.text.split("is back")[-1]


def test_after_a_failure_redis_is_left_alone_for_retry_after(own_redis: EmbeddedRedis) -> None:
    cache = Cache(own_redis.url, namespace="t", retry_after=3600)
    assert cache.set("k", 1)
    own_redis.stop()
    assert cache.get("k") is None  # this call fails and opens the quiet window
    own_redis.start()
    # Redis is back, but within the window the cache does not even try (no per-call timeout)
    assert cache.get("k") is None and cache.stats().errors == 1
    cache.retry_after = 0
    cache._down_until = 0.0  # the window has passed
    assert cache.get("k") == 1


def test_redis_refusing_a_write_is_not_an_outage(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lewis_tasks.infra.cache")
    client = redis.Redis.from_url(own_redis.url)
    cache = Cache(own_redis.url, namespace="t")
    client.config_set("maxmemory", "1")  # noeviction + full: every write is refused with OOM
    try:
        assert cache.set("k", "v") is False and cache.set("k2", "v") is False
        assert cache.available
        assert caplog.text.count("refused set") == 1
    finally:
        client.config_set("maxmemory", "0")
        client.close()
