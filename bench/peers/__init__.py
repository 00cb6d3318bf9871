"""The peers: huey, dramatiq and taskiq measured in the platform suite's run, beside LEWIS and
bare Celery, on the same private Redis (a broker db and a results db each), with the same
task shapes: a no-op, a 50 ms wait.

Each peer runs its own best-known setup for 2 worker processes (its app module in this
package says which and why) and is driven through its own API: `huey_app`, `dramatiq_app`,
`taskiq_app` each give ``worker_argvs(kind)`` and a ``Client``. The functions here time the
shapes the same way `bench.platform` times LEWIS and Celery:

* `round_trip` — sequential submit → result of a no-op, after warm-up (p50 / p99);
* `drain` — N no-ops pushed at once into 2 running worker processes, until the last result;
* `enqueue` — tasks/s into Redis with no worker running, one call per task (and the peer's
  own many-at-once form where it has one);
* `waits` — N tasks of a 50 ms wait pushed at once, until the last result.

The peers are bench-only dependencies, pinned in bench/requirements-peers.txt and never in
pyproject (CI does not install them). Install them beside the project in a venv of their own:

    scripts/bench-peers          # makes /work/peers-venv (or $LEWIS_PEERS_VENV), then
    /work/peers-venv/bin/python -m bench.run platform

A peer whose package is missing is left out of the run with one line naming the file.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ..harness import ROOT, db_url, percentile, processes

PEERS = ("huey", "dramatiq", "taskiq")
REQUIREMENTS = ROOT / "bench" / "requirements-peers.txt"
# (package to import, broker db, results db) on the private Redis; LEWIS and Celery use 1-4
LAYOUT = {"huey": ("huey", 5, 6), "dramatiq": ("dramatiq", 7, 8), "taskiq": ("taskiq_redis", 9, 10)}
READY_TIMEOUT = 60.0


class Client(Protocol):
    """What each peer's app module offers the bench (its producer side)."""

    batched: str | None  # how the peer sends many at once, or None when it has no such form

    def round_trips(self, samples: int, warmup: int) -> list[float]: ...
    def push(self, kind: str, count: int, seconds: float = 0.0) -> None: ...
    def push_single(self, count: int) -> None: ...
    def push_batched(self, count: int) -> None: ...
    def probe(self, kind: str, count: int, seconds: float) -> set[int]: ...
    def finished(self) -> int: ...
    def queued(self) -> int: ...
    def clear_results(self) -> None: ...
    def close(self) -> None: ...


def missing(name: str) -> str | None:
    """One line saying why ``name`` cannot run here, or None when its package imports."""
    package = LAYOUT[name][0]
    try:
        importlib.import_module(package)
    except ImportError:
        rel = REQUIREMENTS.relative_to(ROOT)
        return (
            f"bench: peer {name} skipped: {package} is not installed "
            f"(pip install -r {rel}, or scripts/bench-peers)"
        )
    return None


class Peer:
    """One peer on the private Redis: its workers, its client, its dbs."""

    def __init__(self, name: str, server: Any, home: Path) -> None:
        self.name = name
        self.home = home
        _, broker_db, results_db = LAYOUT[name]
        self.broker, self.results = db_url(server, broker_db), db_url(server, results_db)
        self.module = importlib.import_module(f"bench.peers.{name}_app")
        self.client: Client = self.module.Client(self.broker, self.results)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LEWIS_")},
            "PYTHONPATH": str(ROOT),
            "BENCH_BROKER_URL": self.broker,
            "BENCH_BACKEND_URL": self.results,
            **getattr(self.module, "WORKER_ENV", {}),
        }
        import redis

        self.broker_client = redis.Redis.from_url(self.broker)
        self.results_client = redis.Redis.from_url(self.results)

    def reset(self) -> None:
        self.broker_client.flushdb()
        self.results_client.flushdb()

    @contextlib.contextmanager
    def workers(self, kind: str) -> Iterator[None]:
        """The peer's workers for 'latency', 'noop' or 'sleep', ready and with no results
        stored; each in its own process group, killed on the way out."""
        self.reset()
        argvs, expected = self.module.worker_argvs(kind)
        with processes(argvs, self.env, f"peer-{self.name}-{kind}"):
            wait_ready(self.client, kind, expected)
            self.client.clear_results()
            yield

    def close(self) -> None:
        self.client.close()
        self.broker_client.close()
        self.results_client.close()


def wait_ready(
    client: Client, kind: str, processes_expected: int, timeout: float = READY_TIMEOUT
) -> None:
    """Block until ``processes_expected`` distinct worker processes have each run a probe task
    (a short wait returning its pid); every probe has finished when this returns."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    error: Exception | None = None
    while len(seen) < processes_expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(seen)}/{processes_expected} worker processes answered "
                f"in {timeout}s (last error: {error!r})"
            )
        try:
            seen |= client.probe(kind, 4 * processes_expected, 0.05)
        except Exception as exc:  # each library its own timeout error  # noqa: BLE001
            error = exc
            time.sleep(0.5)


def load(names: tuple[str, ...], server: Any, home: Path) -> dict[str, Peer]:
    """The peers of ``names`` whose packages are installed; one line for each left out."""
    peers = {}
    for name in names:
        reason = missing(name)
        if reason:
            print(reason, flush=True)
            continue
        peers[name] = Peer(name, server, home)
    return peers


def round_trip(peer: Peer, samples: int = 400, warmup: int = 30) -> dict[str, Any]:
    with peer.workers("latency"):
        rtts = peer.client.round_trips(samples, warmup)
    return {"p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99), "samples": samples}


def drain(peer: Peer, count: int = 10_000) -> dict[str, Any]:
    with peer.workers("noop"):
        began = time.monotonic()
        peer.client.push("noop", count)
        ended = _wait_finished(peer, count, timeout=count / 50)
    return {"tasks_per_s": count / (ended - began), "tasks": count, "seconds": ended - began}


def enqueue(peer: Peer, count: int = 5_000, batched: bool = False) -> dict[str, Any] | None:
    """Tasks/s into Redis with no worker running; None when ``batched`` and the peer has no
    many-at-once form."""
    if batched and peer.client.batched is None:
        return None
    peer.reset()
    began = time.perf_counter()
    if batched:
        peer.client.push_batched(count)
    else:
        peer.client.push_single(count)
    seconds = time.perf_counter() - began
    queued = peer.client.queued()
    peer.reset()
    if queued != count:
        raise RuntimeError(f"{peer.name}: {queued} of {count} messages reached the queue")
    return {"tasks_per_s": count / seconds, "tasks": count}


def waits(peer: Peer, count: int = 2_000, wait: float = 0.05) -> dict[str, Any]:
    with peer.workers("sleep"):
        began = time.monotonic()
        peer.client.push("sleep", count, wait)
        ended = _wait_finished(peer, count, timeout=120)
    return {"seconds": ended - began, "tasks": count, "ideal_s": count * wait / 200}


def _wait_finished(peer: Peer, count: int, timeout: float, poll: float = 0.002) -> float:
    """The monotonic time the peer's ``count``-th result exists, polled with an O(1) count
    (DBSIZE of a results-only db, or HLEN of huey's results hash) that costs the server
    nothing, as `wait_results` does for LEWIS and Celery."""
    deadline = time.monotonic() + timeout
    while peer.client.finished() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{peer.name}: only {peer.client.finished()}/{count} tasks finished in {timeout}s"
            )
        time.sleep(poll)
    return time.monotonic()
