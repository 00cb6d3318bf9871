"""One Redis client per URL per process, kept in the process's runtime (which a forked child
rebuilds: a socket shared across a fork corrupts both sides' replies).

Producers do not import redis-py: what Redis raises reaches them as
:class:`~lewis_tasks.errors.BrokerUnavailable` (:func:`broker_errors`, :func:`reach_broker`), and
:func:`unreachable_errors` names the connection errors a publish can end in.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import BrokerUnavailable
from .config import redact_url
from .runtime import runtime


def get_redis(url: str | None = None, *, timeout: float | None = None) -> redis.Redis:
    """A pooled client for ``url`` (default: the broker's Redis), private to this process."""
    return runtime().redis(url, timeout=timeout)


def reset_clients() -> None:
    """Forget every client (after settings change in tests): the next use connects anew."""
    runtime().forget_redis()


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """A Redis error (or a socket's) inside the block as BrokerUnavailable, for callers that
    carry on without Redis (a coarser progress, no slots online)."""
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"Redis did not answer: {first_line(exc)}") from exc


def reach_broker(url: str, timeout: float) -> None:
    """One PING of the broker, ``timeout`` seconds for connect and reply and no retry:
    BrokerUnavailable in one line within ``timeout``. Producers that write rows before they
    publish ask this first, since Celery's publish and result backend retry a dead Redis for
    ~20 s and end in a multi-line RuntimeError."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(
            f"broker {redact_url(url)} is unreachable (no answer within "
            f"{timeout:g} s): {first_line(exc)}"
        ) from None
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"broker {redact_url(url)} refused a PING: {first_line(exc)}"
        ) from None
    finally:
        client.close()


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean a broker could not be reached while publishing: redis-py's, the
    socket layer's and (in a process that loaded kombu) kombu's."""
    errors: tuple[type[BaseException], ...] = (
        redis.ConnectionError,
        redis.TimeoutError,
        ConnectionError,
        TimeoutError,
    )
    kombu_errors = sys.modules.get("kombu.exceptions")  # only a process that loaded kombu
    return errors if kombu_errors is None else (*errors, kombu_errors.OperationalError)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its class's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
