"""The Redis barrier against the real Redis fixture, with one thread per party."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lewis_tasks.errors import InvalidInput, TransientError
from lewis_tasks.infra.barrier import RedisBarrier


def run_parties(
    client: redis.Redis,
    n: int,
    parties: int,
    timeout: float = 5.0,
    delays: list[float] | None = None,
    named: bool = True,
    **options: Any,
) -> list[Any]:
    """Start ``n`` threads waiting on one barrier of ``parties``; each result or error."""
    results: list[Any] = [None] * n
    barriers: list[RedisBarrier] = []

    def party(i: int) -> None:
        if delays:
            time.sleep(delays[i])
        barrier = RedisBarrier(client, "lewis:test:barrier", parties, timeout, **options)
        barriers.append(barrier)
        try:
            start = barrier.wait(f"party-{i}" if named else None)
            results[i] = (start, barrier.start_server, time.time())
        except Exception as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=party, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    return results


def test_all_parties_get_the_same_start_after_the_last_arrives(redis_client: redis.Redis) -> None:
    # Given 4 parties arriving over ~0.3 s
    arrived_last = time.time() + 0.3
    results = run_parties(redis_client, 4, 4, delays=[0.0, 0.1, 0.2, 0.3], lead=0.5)
    assert not any(isinstance(r, Exception) for r in results), results
    starts = [r[0] for r in results]
    # Then they share one start on Redis's clock, and (same host) on the local clock too
    assert len({r[1] for r in results}) == 1
    assert max(starts) - min(starts) < 0.25
    # and that start lies after the last arrival, by about the lead
    assert min(starts) > arrived_last
    # and nobody was released before the last party arrived
    assert all(r[2] >= arrived_last - 0.05 for r in results)


def test_timeout_when_a_party_is_missing(redis_client: redis.Redis) -> None:
    results = run_parties(redis_client, 2, 3, timeout=0.5, named=False)
    assert all(isinstance(r, TransientError) for r in results), results
    assert "of 3 parties arrived within 0.5 s" in str(results[0])
    # the anonymous parties that gave up left the set, so their retries count afresh
    assert redis_client.scard("lewis:test:barrier:members") == 0


def test_a_redelivered_party_counts_once(redis_client: redis.Redis) -> None:
    # Given the first delivery of party "a" waiting on a barrier of 2
    first: list[Any] = []
    waiter = threading.Thread(
        target=lambda: first.append(
            RedisBarrier(redis_client, "lewis:test:barrier", 2, 5.0).wait("a")
        )
    )
    waiter.start()
    time.sleep(0.1)
    # When "a" arrives again (a redelivery) it does not complete the barrier
    with pytest.raises(TransientError, match="1 of 2"):
        RedisBarrier(redis_client, "lewis:test:barrier", 2, 0.3).wait("a")
    # and when "b" arrives, both are released with the same start
    start_b = RedisBarrier(redis_client, "lewis:test:barrier", 2, 5.0).wait("b")
    waiter.join(6)
    assert first and abs(first[0] - start_b) < 0.25


def test_keys_expire(redis_client: redis.Redis) -> None:
    results = run_parties(redis_client, 2, 2, timeout=2.0)
    assert not any(isinstance(r, Exception) for r in results), results
    for key in RedisBarrier(redis_client, "lewis:test:barrier", 2, 2.0).keys:
        if redis_client.exists(key):
            assert 0 < redis_client.ttl(key) <= 2 + 1 + 60


def test_a_late_party_gets_the_same_start(redis_client: redis.Redis) -> None:
    first = run_parties(redis_client, 2, 2)
    late = RedisBarrier(redis_client, "lewis:test:barrier", 2, 1.0)
    late.wait("party-9")
    assert late.start_server == first[0][1]


def test_single_party_and_bad_parameters(redis_client: redis.Redis) -> None:
    start = RedisBarrier(redis_client, "lewis:test:solo", 1, 1.0, lead=0.2).wait()
    assert start > time.time()
    with pytest.raises(InvalidInput, match="at least 1 party"):
        RedisBarrier(redis_client, "k", 0, 1.0)
    with pytest.raises(InvalidInput, match="timeout"):
        RedisBarrier(redis_client, "k", 2, 0)


def test_redis_down_is_transient() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(TransientError, match="Redis failed"):
        RedisBarrier(dead, "k", 2, 0.5).wait()
