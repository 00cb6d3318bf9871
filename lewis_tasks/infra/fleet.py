"""Presence records on the broker: who is in the fleet, what it consumes, whether it drains.

Every worker (from its consumer's event loop, :mod:`.fleet_worker`) and every beat (from its
tick) writes a small record with a time-to-live of a few periods: a member that stops writing
(dead, hung, cut off) drops out by itself. Reading them is one SCAN and one MGET on plain
redis-py, without Celery: ``lewis health`` answers within a probe's second.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis

from ..domain.fleet import BeatView, WorkerRecord
from ..errors import ConfigError

LEADER_KEY = "lewis:beat:leader"  # the beat lease (beat.py, which imports Celery: a probe must not)
WORKER_KEY = "lewis:fleet:worker:{name}"
BEAT_KEY = "lewis:fleet:beat:{token}"
HEARTBEAT_KEY = "lewis:heartbeat:last"  # the last heartbeat's summary, for `lewis status`
PRESENCE_PERIOD = 2.0  # seconds between a member's writes
PRESENCE_TTL = 3 * PRESENCE_PERIOD + 1  # two missed writes and the member is gone
# a node name chosen by a starting worker, held by its pid until its presence record shows:
# two workers started at the same moment on one host never take the same name
CLAIM_KEY = "lewis:fleet:claim:{name}"
CLAIM_TTL = 300


def presence_period(health_check_interval: float) -> float:
    """Write at least every :data:`PRESENCE_PERIOD` s (sooner if the heartbeat is faster)."""
    return max(0.2, min(PRESENCE_PERIOD, health_check_interval))


def write_worker(
    client: redis.Redis, record: WorkerRecord, period: float = PRESENCE_PERIOD
) -> None:
    payload = {**record.to_dict(), "at": time.time()}
    client.set(
        WORKER_KEY.format(name=record.name), json.dumps(payload), px=int((3 * period + 1) * 1000)
    )


def forget_worker(client: redis.Redis, name: str) -> None:
    client.delete(WORKER_KEY.format(name=name))


def write_beat(client: redis.Redis, token: str, role: str, ttl: float, every: float) -> None:
    """This beat's record: its role and how often it writes (``every`` s), kept ``ttl`` s."""
    client.set(
        BEAT_KEY.format(token=token),
        json.dumps({"token": token, "role": role, "every": every, "ttl": ttl, "at": time.time()}),
        px=max(1, int(ttl * 1000)),
    )


def forget_beat(client: redis.Redis, token: str) -> None:
    client.delete(BEAT_KEY.format(token=token))


def _read(client: redis.Redis, pattern: str) -> list[dict[str, Any]]:
    keys = sorted(client.scan_iter(match=pattern, count=500))
    if not keys:
        return []
    out = []
    for raw in client.mget(keys):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def read_workers(client: redis.Redis) -> list[WorkerRecord]:
    records = []
    for data in _read(client, WORKER_KEY.format(name="*")):
        try:
            records.append(WorkerRecord.from_dict(data))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(records, key=lambda r: r.name)


def leader(client: redis.Redis) -> tuple[str | None, float]:
    """(holder token, seconds left) of the beat lease; (None, 0) when no beat leads."""
    pipe = client.pipeline(transaction=False)
    pipe.get(LEADER_KEY)
    pipe.pttl(LEADER_KEY)
    holder, pttl = pipe.execute()
    if holder is None:
        return None, 0.0
    return holder.decode(), max(0.0, pttl / 1000)


def write_heartbeat(client: redis.Redis, summary: dict[str, Any], ttl: float) -> None:
    """The last heartbeat's summary beside its database rows: `lewis status` reads it
    without a database (and its driver's import) on the way."""
    client.set(HEARTBEAT_KEY, json.dumps(summary), px=max(1, int(ttl * 1000)))


def read_heartbeat(client: redis.Redis) -> dict[str, Any] | None:
    """The summary :func:`write_heartbeat` left, or None (none yet, expired, or unreadable)."""
    raw = client.get(HEARTBEAT_KEY)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def capacity_online(client: redis.Redis, queue: str) -> tuple[int, int]:
    """Task slots (threads or children), and worker processes, taking new work from ``queue``
    now."""
    taking = [w for w in read_workers(client) if queue in w.consuming]
    return sum(w.concurrency for w in taking), len(taking)


def database_fingerprint(url: str, host: str | None = None) -> str:
    """Which database ``url`` names, as 12 hex digits another process can compare without
    seeing the URL: its scheme, host, port and database, no user or password. A SQLite file
    is one machine's own, so its fingerprint includes this host's name: the same path on two
    hosts is two databases."""
    parts = urlsplit(url)
    where = f"{parts.hostname or ''}:{parts.port or ''}{parts.path}"
    if parts.scheme.startswith("sqlite"):
        where = f"{host or socket.gethostname()}|{parts.path}"
    return hashlib.sha256(f"{parts.scheme.split('+')[0]}|{where}".encode()).hexdigest()[:12]


def check_cluster_agreement(
    url: str,
    visibility_timeout: int,
    timeout: float = 2.0,
    confirm: Callable[[list[str]], set[str]] | None = None,
    database: str = "",
) -> None:
    """ConfigError if a live worker of this broker runs with another visibility timeout, or
    writes to another database (``database``: this process's fingerprint).

    With two visibility timeouts in one cluster, a task running longer than the shorter one is
    handed to a second worker by the hosts using it; with two databases, a scan's chunks land
    where its merge never reads them. ``confirm(names)`` returns those that answer a ping now:
    a record outlives a killed worker by a few seconds, and a dead worker's value must not
    keep its replacement out. An unreachable broker is not judged here (the worker's own
    connection retries report it).
    """
    from ..domain.fleet import disagreeing, other_databases

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        workers = read_workers(client)
    except (redis.RedisError, OSError):
        return
    finally:
        client.close()
    checks: list[tuple[list[WorkerRecord], Callable[[list[WorkerRecord]], str]]] = [
        (
            disagreeing(workers, visibility_timeout),
            lambda others: _timeout_mismatch(others, visibility_timeout),
        ),
        (other_databases(workers, database), database_mismatch),
    ]
    for others, line in checks:
        if others and confirm is not None:
            alive = confirm([w.name for w in others])
            others = [w for w in others if w.name in alive]
        if others:
            raise ConfigError(line(others))


def _named(others: list[WorkerRecord]) -> str:
    """The first worker's name, and how many more there are."""
    return others[0].name + (f" and {len(others) - 1} more" if len(others) > 1 else "")


def _timeout_mismatch(others: list[WorkerRecord], visibility_timeout: int) -> str:
    return (
        f"setting broker.visibility_timeout ({visibility_timeout}s) differs from the "
        f"cluster's ({others[0].visibility_timeout}s on {_named(others)}): every host must "
        "use the same, or a long task is delivered again to a second worker"
    )


def database_mismatch(others: list[WorkerRecord]) -> str:
    """The one line for a process whose database.url is not the one ``others`` write to."""
    return (
        f"setting database.url names another database than {_named(others)} writes to: every "
        "process of a cluster must set the same LEWIS_DATABASE_URL, or results land where the "
        "others never read them (a SQLite file is one host's own: across hosts use PostgreSQL)"
    )


def free_node_name(url: str, profile: str, host: str, timeout: float = 2.0) -> str:
    """A stable node name for a new ``profile`` worker on ``host``: ``io@host`` or, when a live
    worker holds that, ``io-2@host``, ``io-3@host``… (the first free one). Stable across
    restarts, so Flower and Prometheus series continue; without a broker answer, the plain
    name (the worker will not start without the broker anyway)."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            taken = {r.name for r in read_workers(client)}
            for i in range(1, 10_000):
                name = f"{profile}@{host}" if i == 1 else f"{profile}-{i}@{host}"
                if name not in taken and _claim(client, name):
                    return name
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return f"{profile}@{host}"
    return f"{profile}-{os.getpid()}@{host}"


def _claim(client: redis.Redis, name: str) -> bool:
    """Hold ``name`` for this process: free, already ours, or held by a process of this host
    that has died (a worker restarted after a crash keeps its name)."""
    key, me = CLAIM_KEY.format(name=name), str(os.getpid())
    if client.set(key, me, nx=True, ex=CLAIM_TTL):
        return True
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            raw = pipe.get(key)
            holder = raw.decode() if isinstance(raw, bytes) else raw
            if holder is not None and holder != me and _alive(holder):
                return False
            pipe.multi()
            pipe.set(key, me, ex=CLAIM_TTL)
            pipe.execute()
            return True
        except redis.WatchError:  # another process claimed it this instant
            return False


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True  # someone else's process, or not ours to judge: leave the name to it
    return True


def read_beat(client: redis.Redis) -> BeatView:
    """The lease holder and every beat alive; a beat is *silent* when its record is older than
    two of its writes (measured on Redis' clock: the record's ttl less its PTTL). A silent
    holder died and its lease is running out: a failover is under way. A silent other beat
    is dead (its record outlives it by up to two leases), not a standby."""
    holder = client.get(LEADER_KEY)
    leader = holder.decode() if isinstance(holder, bytes) else holder
    keys = sorted(client.scan_iter(match=BEAT_KEY.format(token="*"), count=500))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute() if keys else []
    beats, silent = [], leader is not None
    for raw, pttl in zip(replies[::2], replies[1::2], strict=True):
        try:
            data = json.loads(raw) if raw is not None else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not data.get("token"):
            continue
        token = str(data["token"])
        age = float(data.get("ttl") or 0) - max(0, pttl) / 1000
        # two writes missed (a leader's: 2/3 of the lease + 0.5 s, seen before it runs out)
        quiet = age > 2 * float(data.get("every") or 0) + 0.5
        if token == leader:
            silent = quiet
        elif quiet:
            continue
        beats.append(token)
    return BeatView(leader=leader, beats=tuple(beats), leader_silent=silent)


def probe_fleet(url: str, timeout: float) -> tuple[list[WorkerRecord], BeatView]:
    """The workers' and the beats' records, read once on a client of its own that never
    retries (redis-py's default three, with backoff, would stretch a probe past its second);
    BrokerUnavailable naming the broker if it does not answer."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from ..domain.redact import redact_url
    from ..errors import BrokerUnavailable

    deadline = max(0.05, timeout)
    client = redis.Redis.from_url(
        url, socket_timeout=deadline, socket_connect_timeout=deadline, retry=Retry(NoBackoff(), 0)
    )
    try:
        return read_workers(client), read_beat(client)
    except (redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(
            f"broker {redact_url(url)} does not answer ({type(exc).__name__})"
        ) from None
    finally:
        client.close()


__all__ = [
    "LEADER_KEY",
    "WORKER_KEY",
    "BEAT_KEY",
    "PRESENCE_PERIOD",
    "PRESENCE_TTL",
    "presence_period",
    "write_worker",
    "forget_worker",
    "write_beat",
    "forget_beat",
    "read_workers",
    "capacity_online",
    "check_cluster_agreement",
    "database_fingerprint",
    "database_mismatch",
    "free_node_name",
    "read_beat",
    "probe_fleet",
    "leader",
    "HEARTBEAT_KEY",
    "write_heartbeat",
    "read_heartbeat",
]
