"""Experiments on the stack's singletons and supervisors: beats with the leader killed, a
poison task, and ``lewis up`` losing its embedded Redis.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis

from lewis_tasks.errors import LewisError, RedeliveryLimitExceeded
from tests.support.procs import kill_group, lewis_process

from .cluster import answering, broker_env, producing_for, until
from .experiments import LOGS, Cluster
from .ledger import Figures, SteadyLoad, tally_sender, wait_drained

RUNS_KEY, HEARTBEAT = "lewis:stats:runs", "lewis.control.heartbeat"


# ------------------------------------------------------------------------- beats


def heartbeat_runs(client: redis.Redis) -> int:
    """How many times the heartbeat job ran (LewisTask's run counter)."""
    value = client.hget(RUNS_KEY, HEARTBEAT)
    return int(value) if value else 0


def beat_failover(c: Cluster, beats: int = 2, kills: int = 3, between: float = 5.0) -> Figures:
    """Run ``beats`` beats with one control worker; kill -9 the leader ``kills`` times (starting
    it again as a standby). Every slot of the heartbeat must fire exactly once: a failover may
    skip at most one slot (issue 12, item 9) and never fire one twice."""
    from lewis_tasks.infra.beat import LEADER_KEY, leader

    client = redis.Redis.from_url(c.env["LEWIS_BROKER_URL"])
    client.delete(RUNS_KEY, LEADER_KEY)
    interval = float(c.env["LEWIS_MONITORING_HEALTH_CHECK_INTERVAL"])
    lease = float(c.env["LEWIS_STACK_BEAT_LOCK_TIMEOUT"])
    began = datetime.now(UTC)
    recoveries: list[float | None] = []
    with contextlib.ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []

        def start_beat() -> None:
            procs.append(
                stack.enter_context(lewis_process(["beat"], c.env, LOGS / f"beat-{len(procs)}.log"))
            )

        for _ in range(beats):
            start_beat()
        until(lambda: heartbeat_runs(client) >= 3, 60)
        for _ in range(kills):
            holder = leader(client)[0] or ""
            victim = next((p for p in procs if f":{p.pid}:" in holder and p.poll() is None), None)
            if victim is None:
                recoveries.append(None)
                break
            kill_group(victim)
            fault = time.time()
            took = until(lambda h=holder: (leader(client)[0] or h) != h, lease * 4)
            runs = heartbeat_runs(client)
            fired = until(lambda r=runs: heartbeat_runs(client) > r, lease * 4) if took else None
            recoveries.append(None if fired is None else fired - fault)
            start_beat()
            time.sleep(between)
        for p in procs:
            kill_group(p)
        time.sleep(2 * interval)  # the control worker finishes the last fired heartbeat
    slots = _heartbeat_slots(c, began)
    runs = heartbeat_runs(client)
    client.close()
    expected = (max(slots) - min(slots) + 1) if slots else 0
    figures = Figures(
        f"{beats} beats, leader kill -9",
        submitted=expected,
        completed=len(slots),
        duplicates=max(0, runs - len(slots)),
        harmless=runs == len(slots),
        faults=kills,
        allowed_lost=kills,
        bound_s=lease + interval,
        bound_name="beat lease + interval",
    )
    figures.rerun = figures.duplicates
    figures.recovery_s = (
        None
        if not recoveries or None in recoveries
        else max(r for r in recoveries if r is not None)
    )
    figures.notes.append(
        f"{runs} heartbeat runs for {len(slots)} slots; "
        f"{expected - len(slots)} slots skipped in {kills} failovers"
    )
    return figures


def _heartbeat_slots(c: Cluster, since: datetime) -> set[int]:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage import heartbeats
    from lewis_tasks.storage.db import session_scope

    with session_scope(get_engine()) as session:
        return {r.slot for r in heartbeats.heartbeats_since(session, since)}


# ------------------------------------------------------------------------- poison


def poison_task(
    c: Cluster, neighbours: int = 10, seconds: float = 0.5, worker: str = "cpu2"
) -> Figures:
    """A task that SIGKILLs the pool child running it, every time, among ``neighbours`` normal
    tasks: it must end as failed after tasks.max_redeliveries, never loop; the neighbours
    complete and the worker stays up."""
    from lewis_tasks.producer import submit_many

    c.ledger.clear()
    cap = int(c.cpu_env["LEWIS_TASKS_MAX_REDELIVERIES"])
    visibility = float(c.cpu_env["LEWIS_BROKER_VISIBILITY_TIMEOUT"])
    send = tally_sender(c.ledger, "cpu", seconds, "neighbour")
    fault = time.time()
    [handle] = submit_many("lewis.testing.poison", [((c.ledger.url, "poison"), {})], queue="cpu")
    submitted = {send(n) for n in range(neighbours)}
    failed_at, notes = None, []
    try:
        handle.wait(timeout=(cap + 1) * visibility + 30)
        notes.append("the poison task succeeded?")
    except RedeliveryLimitExceeded as exc:
        failed_at = time.time()
        if f"max_redeliveries={cap}" not in str(exc):
            notes.append(f"the failure does not name the cap: {exc}")
            failed_at = None
    except Exception as exc:  # a timeout, or another failure: the cap did not do its work
        notes.append(f"poison ended as {type(exc).__name__}")
    wait_drained(c.ledger, submitted, 30)
    starts = c.ledger.starts("poison")
    figures = c.ledger.figures("poison task", submitted)
    figures.submitted += 1
    figures.completed += failed_at is not None  # accounted for: failed, with the cap named
    figures.rerun += starts > 1
    figures.faults = starts  # every start of the poison killed the child running it
    figures.harmless = figures.harmless and starts <= cap + 1
    figures.recovery_s = None if failed_at is None else failed_at - fault
    figures.bound_s, figures.bound_name = (cap + 1) * visibility, "(cap + 1) × visibility timeout"
    notes.append(f"poison started {starts}× (cap {cap}: at most {cap + 1})")
    if c.workers[worker].current not in answering(c.app):
        notes.append("its worker no longer answers")
        figures.recovery_s = None
    figures.notes = notes + figures.notes
    return figures


# ------------------------------------------------------------------------- lewis up


def embedded_redis_kill(
    down_patience: float = 60.0,
    before: float = 4.0,
    after: float = 6.0,
    rate: float = 5.0,
    seconds: float = 0.3,
) -> Figures:
    """``lewis up`` with its own Redis; kill -9 that redis-server under an io load. The
    supervisor must restart it (same port, password, AOF) and the workers resume."""
    with tempfile.TemporaryDirectory(prefix="lewis-chaos-up-") as tmp:
        home = Path(tmp)
        # the chaos settings, without a broker URL: `lewis up` then runs its own Redis
        env = {
            k: v
            for k, v in broker_env("redis://127.0.0.1:1/0", home).items()
            if k != "LEWIS_BROKER_URL"
        }
        with _stack(env, home) as (supervisor, app):
            broker_url = str(app.conf.broker_url)
            results = _Results(broker_url)
            load = SteadyLoad(results.sender(seconds), rate)
            with load:
                began = time.time()
                while time.time() < began + before:
                    results.completed(set(load.submitted))
                    time.sleep(0.5)
                server = _redis_child(supervisor)
                fault = time.time()
                if server is not None:
                    server.kill()
                answered: float | None = None
                while time.time() < fault + max(after, down_patience):
                    results.completed(set(load.submitted))
                    if answered is None and {"io", "cpu", "control"} <= {
                        n.split("-")[0] for n in answering(app)
                    }:
                        answered = time.time()
                    if time.time() >= fault + after:
                        load.stop()
                        if answered is not None:
                            break
                    time.sleep(0.5)
            submitted = set(load.submitted)
            if supervisor.poll() is None:  # else nothing runs them any more
                until(
                    lambda: results.completed(submitted) == submitted, down_patience, interval=0.5
                )
            exited = supervisor.poll()
            if exited is None:
                figures = results.figures("embedded redis kill -9 (lewis up)", submitted)
        if exited is not None:  # the stack is gone: count from its AOF, as a restart would see it
            with _reopened(home, broker_url):
                figures = _Results(broker_url, stale=results.done).figures(
                    "embedded redis kill -9 (lewis up)", submitted
                )
            figures.notes.append(f"`lewis up` exited (code {exited}); counted from its AOF")
        first = results.first_completion_after(fault)
        if (answered is None or first is None) and (home / "logs").is_dir():
            # keep the stack's own logs (its home is a temporary directory) to see why
            shutil.copytree(home / "logs", LOGS / "lewis-up-stack-logs", dirs_exist_ok=True)
    figures.recovery_s = None if answered is None or first is None else max(answered, first) - fault
    figures.refused, figures.faults = load.refused, 1
    figures.bound_s = float(env["LEWIS_BROKER_VISIBILITY_TIMEOUT"])
    figures.bound_name = "visibility timeout"
    return figures


@contextlib.contextmanager
def _reopened(home: Path, url: str) -> Iterator[None]:
    """The stack's redis-server started again on its port, password and AOF (to count)."""
    from urllib.parse import urlsplit

    from lewis_tasks.infra.redis_server import EmbeddedRedis

    parts = urlsplit(url)
    server = EmbeddedRedis(home / "redis", port=parts.port or 0, password=parts.password)
    server.start()
    try:
        yield
    finally:
        server.stop()


@contextlib.contextmanager
def _stack(env: dict[str, str], home: Path) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    from lewis_tasks.infra.config import read_stack_file

    LOGS.mkdir(parents=True, exist_ok=True)
    with lewis_process(["up", "--timeout", "90"], env, LOGS / "lewis-up.log") as proc:
        if until(lambda: bool((read_stack_file(home) or {}).get("ready")), 100) is None:
            raise LewisError(f"`lewis up` was not ready in 100s; see {LOGS / 'lewis-up.log'}")
        with producing_for(env) as app:  # the broker URL comes from the stack's stack.json
            yield proc, app


def _redis_child(supervisor: subprocess.Popen[bytes]) -> psutil.Process | None:
    for child in psutil.Process(supervisor.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "redis-server" in child.name():
                return child
    return None


class _Results:
    """Completion counted the way a caller sees it: the task's stored result (keyed by its id,
    so a re-run overwrites one record), runs by LewisTask's redelivery counter."""

    def __init__(self, url: str, stale: dict[str, float] | None = None) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.done: dict[str, float] = dict(stale or {})  # id → when first seen completed

    def sender(self, seconds: float) -> Any:
        from lewis_tasks.producer import submit_many

        def send(_n: int) -> str:
            return submit_many("lewis.bench.io_sleep", [((seconds,), {})], queue="io", pack=1)[0].id

        return send

    def completed(self, ids: set[str]) -> set[str]:
        todo = sorted(ids - set(self.done))
        with contextlib.suppress(redis.RedisError):
            pipe = self.client.pipeline(transaction=False)
            for task_id in todo:
                pipe.exists(f"celery-task-meta-{task_id}")
            now = time.time()
            for task_id, found in zip(todo, pipe.execute(), strict=True):
                if found:
                    self.done[task_id] = now
        return ids & set(self.done)

    def first_completion_after(self, when: float) -> float | None:
        return min((t for t in self.done.values() if t > when), default=None)

    def figures(self, name: str, submitted: set[str]) -> Figures:
        from lewis_tasks.infra.task import DELIVERIES_KEY

        completed = self.completed(submitted)
        notes = []
        try:
            rerun = sum(
                1
                for t in submitted
                if self.client.exists(DELIVERIES_KEY.format(task_id=t, retries=0))
            )
        except redis.RedisError:
            rerun = 0
            notes.append("the broker is gone: completions as last seen, re-runs unknown")
        return Figures(
            name,
            submitted=len(submitted),
            completed=len(completed),
            rerun=rerun,
            duplicates=rerun,
            harmless=True,
            notes=notes,
        )
