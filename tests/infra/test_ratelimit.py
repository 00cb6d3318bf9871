"""The Redis token bucket, against the real Redis fixture: counts, not timings."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from lewis_tasks.domain.portscan import scan_ports_blocking
from lewis_tasks.domain.scope import Scope
from lewis_tasks.errors import InvalidInput, TransientError
from lewis_tasks.infra.ratelimit import RedisTokenBucket
from tests.support.listeners import running_listeners

# A slow refill (one token every 100 s) makes every count independent of how long a test runs.
SLOW = 0.01


def test_a_full_bucket_grants_its_burst_and_prices_the_rest(redis_client: redis.Redis) -> None:
    # Given a bucket of rate 1/s and burst 5
    bucket = RedisTokenBucket(redis_client, rate=1, burst=5)
    # When 8 tokens are asked for at once
    granted, wait = bucket.acquire("127.0.0.1", 8)
    # Then exactly the burst is granted, and the other 3 need 3 s at 1 token/s
    assert granted == 5
    assert wait == pytest.approx(3.0)


def test_an_empty_bucket_grants_nothing_and_says_how_long(redis_client: redis.Redis) -> None:
    bucket = RedisTokenBucket(redis_client, rate=SLOW, burst=3)
    assert bucket.acquire("127.0.0.1", 3) == (3, 0.0)
    granted, wait = bucket.acquire("127.0.0.1", 2)
    assert granted == 0
    assert 0 < wait <= 2 / SLOW
    # the wait never asks for more than a bucket can hold
    granted, wait = bucket.acquire("127.0.0.1", 1000)
    assert granted == 0 and wait <= 3 / SLOW


def test_buckets_are_per_host(redis_client: redis.Redis) -> None:
    bucket = RedisTokenBucket(redis_client, rate=SLOW, burst=2)
    assert bucket.acquire("127.0.0.1", 5)[0] == 2
    assert bucket.acquire("::1", 5)[0] == 2
    assert bucket.for_host("127.0.0.1").acquire(1)[0] == 0
    assert redis_client.pttl(bucket.key("127.0.0.1")) > 0  # idle buckets expire


def test_the_budget_holds_across_workers(redis_url: str, redis_client: redis.Redis) -> None:
    # Given 8 "workers", each with its own client, hammering one host's bucket
    burst = 25
    counts: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        client = redis.Redis.from_url(redis_url)
        bucket = RedisTokenBucket(client, rate=SLOW, burst=burst)
        got = sum(bucket.acquire("127.0.0.9", 1)[0] for _ in range(20))
        client.close()
        with lock:
            counts.append(got)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then together they got exactly the burst: never a token twice
    assert sum(counts) == burst and len(counts) == 8


def test_asking_for_nothing_costs_nothing(redis_client: redis.Redis) -> None:
    bucket = RedisTokenBucket(redis_client, rate=SLOW, burst=1)
    assert bucket.acquire("127.0.0.1", 0) == (0, 0.0)
    assert bucket.acquire("127.0.0.1", 1) == (1, 0.0)


def test_default_burst_is_a_tenth_of_a_second(redis_client: redis.Redis) -> None:
    assert RedisTokenBucket(redis_client, rate=1000).burst == 100
    assert RedisTokenBucket(redis_client, rate=3).burst == 1


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": -5}, {"rate": 10, "burst": 0}])
def test_bad_limits_are_invalid_input(redis_client: redis.Redis, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        RedisTokenBucket(redis_client, **kwargs)


def test_without_redis_the_limiter_fails_closed() -> None:
    dead = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.5)
    bucket = RedisTokenBucket(dead, rate=10)
    with pytest.raises(TransientError, match="127.0.0.1"):
        bucket.acquire("127.0.0.1", 1)


def test_a_scan_through_the_shared_bucket_stays_exact(redis_client: redis.Redis) -> None:
    # Given a bucket that grants 10 at a time, quickly refilled
    bucket = RedisTokenBucket(redis_client, rate=20_000, burst=10)
    with running_listeners(5, host="127.77.0.6", seed=2) as few:
        ports = list(range(30000, 30200)) + few.ports
        result = scan_ports_blocking(
            "127.77.0.6", ports, scope=Scope.from_allow(), limiter=bucket.for_host("127.77.0.6")
        )
    # Then the scan finishes with every listener open and nothing else lost
    assert set(few.ports) <= set(result.open)
    assert result.filtered == ()
    assert result.closed_count + len(result.open) == len(set(ports))
