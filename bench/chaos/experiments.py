"""The fault experiments on one real cluster: kill workers and pool children, kill and pause
the broker, under a steady load; each returns its :class:`Figures`.

Every experiment is bounded: its faults, then the load stops and the backlog gets a fixed
patience to drain; what has not completed by then is lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness import LOGS as BENCH_LOGS
from .cluster import (
    LOST_CHILD,
    SCANNING,
    BrokerRedis,
    Respawning,
    answering,
    broker,
    broker_env,
    group_pids,
    pool_children,
    producing_for,
    until,
    wait_answering,
    worker,
)
from .ledger import Figures, Ledger, SteadyLoad, ledger_redis, tally_sender, wait_drained

LOGS = BENCH_LOGS / "chaos"


@dataclass
class Cluster:
    """A broker we break, the ledger, and io, cpu and control workers on the chaos tasks."""

    home: Path
    redis: BrokerRedis
    ledger: Ledger
    app: Any
    env: dict[str, str]  # the io and control workers' (and the producer's)
    cpu_env: dict[str, str]  # pool children die: limits above worker_lost_wait
    workers: dict[str, Respawning] = field(default_factory=dict)
    logs: Path = LOGS

    def visibility(self, env: dict[str, str] | None = None) -> float:
        return float((env or self.env)["LEWIS_BROKER_VISIBILITY_TIMEOUT"])

    def sweep(self, env: dict[str, str] | None = None) -> float:
        """kombu's restore interval for abandoned messages (celery_app.py)."""
        return max(1.0, min(10.0, self.visibility(env) // 10))

    def names(self) -> set[str]:
        return {w.current for w in self.workers.values()}


@contextlib.contextmanager
def cluster(
    profiles: tuple[str, ...] = ("io", "io", "cpu", "control"),
    startup: float = 60.0,
    logs: Path = LOGS,
) -> Iterator[Cluster]:
    """Start the broker, the ledger and one worker per entry of ``profiles``; yield when all
    answer pings. Workers are named ``<profile><index>-<generation>``; their logs (kept after
    the run) go to ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lewis-chaos-")))
        redis = stack.enter_context(broker(home))
        ledger = stack.enter_context(ledger_redis())
        env = broker_env(redis.url, home, **SCANNING)
        cpu_env = broker_env(redis.url, home, **LOST_CHILD)
        app = stack.enter_context(producing_for(env))
        _migrate(env)
        found = Cluster(home, redis, ledger, app, env, cpu_env, logs=logs)
        try:
            for i, profile in enumerate(profiles):
                w = Respawning(
                    profile, f"{profile}{i}-", cpu_env if profile == "cpu" else env, logs
                )
                w.start()
                found.workers[f"{profile}{i}"] = w
            wait_answering(app, found.names(), startup)
            yield found
        finally:
            for w in found.workers.values():
                w.close()


def _migrate(env: dict[str, str]) -> None:
    """The schema and the sample CVE feed, as `lewis up` prepares them (scans need both)."""
    from lewis_tasks.cli.db import upgrade_database as upgrade
    from lewis_tasks.domain.vulns import sample_records
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.infra.vulnlookup import invalidate_vulnerability_cache
    from lewis_tasks.storage import vulns
    from lewis_tasks.storage.db import session_scope

    upgrade(env["LEWIS_DATABASE_URL"])
    with session_scope(get_engine()) as session:
        vulns.import_vulnerabilities(session, sample_records())
    invalidate_vulnerability_cache()


def _drain(c: Cluster, load: SteadyLoad, patience: float) -> set[str]:
    load.stop()
    submitted = set(load.submitted)
    wait_drained(c.ledger, submitted, patience)
    return submitted


def io_worker_kill(
    c: Cluster,
    kills: int = 5,
    every: float = 6.0,
    rate: float = 10.0,
    seconds: float = 1.0,
    victim: str = "io1",
    scan_every: float = 2.0,
    slack: float = 30.0,
) -> list[Figures]:
    """kill -9 one io worker (its whole process) mid-task ``kills`` times under a steady io
    load and a scan every ``scan_every`` seconds, starting it again each time; its tasks and
    scan chunks come back after the visibility timeout. Two rows: the tasks, the scans."""
    from .scans import ScanLoad, scan_figures, scan_targets

    c.ledger.clear()
    target = c.workers[victim]
    recoveries, notes = [], []
    with (
        scan_targets() as listeners,
        ScanLoad(listeners, scan_every) as scans,
        SteadyLoad(tally_sender(c.ledger, "io", seconds, "io-kill"), rate) as load,
    ):
        for n in range(kills):
            time.sleep(every)
            assert target.process is not None
            if n % 2 == 0:  # every other kill waits (a while) for a scan chunk on the victim
                chunks = until(lambda: _running(c, target.current, "lewis.scan.chunk"), every)
                if chunks is None:
                    notes.append("a kill found no scan chunk running")
            interrupted = c.ledger.running_on(group_pids(target.process))
            fault = time.time()
            target.kill()
            target.start()
            if not interrupted:
                notes.append("a kill found no task running")
                continue
            done = until(
                lambda keys=interrupted: c.ledger.last_completion_of(keys) is not None,
                c.visibility() + c.sweep() + slack,
            )
            last = c.ledger.last_completion_of(interrupted)
            recoveries.append(None if done is None or last is None else last - fault)
        scans.stop()
        # what can still complete has by then: a lost task costs this wait, no more
        submitted = _drain(c, load, c.visibility() + c.sweep() + slack)
        scanned = scan_figures(
            "io worker kill -9: scans", scans, c.visibility() + c.sweep() + slack
        )
    bound = c.visibility() + c.sweep() + seconds
    tasks = _figures(
        c,
        "io worker kill -9",
        submitted,
        load,
        kills,
        recoveries,
        bound=bound,
        bound_name="visibility timeout + sweep + task",
        notes=notes,
    )
    scanned.faults, scanned.recovery_s = kills, tasks.recovery_s
    scanned.bound_s, scanned.bound_name = bound, tasks.bound_name
    return [tasks, scanned]


def _running(c: Cluster, worker: str, task: str) -> bool:
    """True if ``worker`` (a name before the @) reports ``task`` among its active tasks."""
    return bool(_active(c, {worker}, task))


def _active(c: Cluster, workers: set[str], task: str) -> list[dict[str, Any]]:
    """The active ``task`` requests of ``workers`` (names before the @), as they report them."""
    try:
        active = c.app.control.inspect(timeout=0.5).active() or {}
    except Exception:  # the broker hiccuped: not seen
        return []
    return [
        t
        for name, tasks in active.items()
        if name.split("@")[0] in workers
        for t in tasks or ()
        if t.get("name") == task
    ]


def host_kill(
    c: Cluster,
    rounds: int = 3,
    workers: int = 2,
    rate: float = 10.0,
    seconds: float = 1.0,
    scan_every: float = 2.0,
    slack: float = 30.0,
) -> list[Figures]:
    """A second host dies: ``workers`` io workers started from another working directory on
    the same broker and database are killed whole (kill -9 of every process at once) while a
    scan chunk runs on one of them, under a steady io load and a scan every ``scan_every`` s.
    The host is not started again: what it held comes back to the first host's workers after
    the visibility timeout (issue 21, item 5). ``rounds`` hosts, one after the other. Two
    rows: the tasks, the scans; recovery, from the kill to the completion of the tasks (the
    scans) it interrupted."""
    from .scans import ScanLoad, scan_figures, scan_targets

    c.ledger.clear()
    task_recoveries: list[float | None] = []
    scan_recoveries: list[float | None] = []
    notes: list[str] = []
    patience = c.visibility() + c.sweep() + slack
    with (
        scan_targets() as listeners,
        ScanLoad(listeners, scan_every) as scans,
        SteadyLoad(tally_sender(c.ledger, "io", seconds, "host-kill"), rate) as load,
    ):
        for n in range(rounds):
            _kill_a_host(c, f"host{n + 2}", workers, patience, task_recoveries, scan_recoveries)
        scans.stop()
        submitted = _drain(c, load, patience)
        scan_row = scan_figures("second host kill -9: scans", scans, patience)
    if not task_recoveries:
        notes.append("no kill found a task running")
    if not scan_recoveries:
        notes.append("no kill found a scan chunk running")
    task_row = _figures(
        c,
        "second host kill -9",
        submitted,
        load,
        rounds,
        task_recoveries,
        bound=c.visibility() + c.sweep() + seconds,
        bound_name="visibility timeout + sweep + task",
        notes=notes,
    )
    scan_row.faults = rounds
    scan_row.recovery_s = (
        None
        if not scan_recoveries or None in scan_recoveries
        else max(r for r in scan_recoveries if r is not None)
    )
    # the interrupted chunk runs again whole (at most its deadline's cap), then the merge
    scan_row.bound_s = c.visibility() + c.sweep() + float(c.env["LEWIS_TASKS_SOFT_TIME_LIMIT"])
    scan_row.bound_name = "visibility timeout + sweep + chunk"
    return [task_row, scan_row]


def _kill_a_host(
    c: Cluster,
    host: str,
    count: int,
    patience: float,
    task_recoveries: list[float | None],
    scan_recoveries: list[float | None],
) -> None:
    """Start ``count`` io workers as ``host`` (their own working directory), wait for a scan
    chunk on one of them, kill them all at once; add the seconds until the tasks (the scans)
    they held completed elsewhere (None: not within ``patience``) to the recoveries."""
    cwd = c.home / host
    cwd.mkdir(exist_ok=True)
    names = {f"{host}-io{i}" for i in range(count)}
    chunks: list[dict[str, Any]] = []

    def chunk_running() -> bool:
        chunks[:] = _active(c, names, "lewis.scan.chunk")
        return bool(chunks)

    with contextlib.ExitStack() as running:
        procs = [running.enter_context(worker("io", n, c.env, c.logs, cwd=cwd)) for n in names]
        wait_answering(c.app, names, 60.0)
        until(chunk_running, 30)
        pids = {pid for p in procs for pid in group_pids(p)}
        interrupted = c.ledger.running_on(pids)
        fault = time.time()
        for pid in pids:  # the whole host at once: every worker process, no goodbye
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if interrupted:
        until(lambda: c.ledger.last_completion_of(interrupted) is not None, patience)
        last = c.ledger.last_completion_of(interrupted)
        task_recoveries.append(None if last is None else last - fault)
    held = {i for i in map(_scan_of, chunks) if i is not None}
    if held:
        finished = until(lambda: _scans_done(held), patience, interval=0.2)
        scan_recoveries.append(None if finished is None else finished - fault)


def _scan_of(request: dict[str, Any]) -> str | None:
    """The scan id of an active ``lewis.scan.chunk`` request (its first argument)."""
    args = request.get("args")
    return str(args[0]) if isinstance(args, list | tuple) and args else None


def _scans_done(ids: set[str]) -> bool:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage import scans
    from lewis_tasks.storage.db import session_scope

    with session_scope(get_engine()) as session:
        return all(
            (scan := scans.get_scan(session, i)) is not None and scan.status == "done" for i in ids
        )


def cpu_child_kill(
    c: Cluster,
    kills: int = 5,
    every: float = 4.0,
    rate: float = 1.5,
    seconds: float = 1.0,
    victim: str = "cpu2",
    scan_every: float = 2.0,
) -> list[Figures]:
    """kill -9 a prefork pool child ``kills`` times under a steady cpu load and a scan every
    ``scan_every`` seconds: every other kill lands in the middle of a scan's merge (armed
    in tests/support/killtasks.py), the rest on a child running a task. Celery sees the child
    lost and requeues its task (task_reject_on_worker_lost). Two rows: tasks, scans."""
    from .scans import ScanLoad, scan_figures, scan_targets

    c.ledger.clear()
    target = c.workers[victim]
    recoveries: list[float | None] = []
    merges: list[float | None] = []
    notes: list[str] = []
    with (
        scan_targets() as listeners,
        ScanLoad(listeners, scan_every) as scans,
        SteadyLoad(tally_sender(c.ledger, "cpu", seconds, "cpu-kill"), rate) as load,
    ):
        for n in range(kills):
            time.sleep(every)
            assert target.process is not None
            if n % 2:
                merges.append(_kill_mid_merge(c))
            else:
                recoveries.append(_kill_busy_child(c, pool_children(target.process), notes))
        scans.stop()
        submitted = _drain(c, load, c.visibility(c.cpu_env) + 30)
        scanned = scan_figures(
            "cpu pool child kill -9: scans (mid-merge)", scans, c.visibility(c.cpu_env) + 30
        )
    # Celery notices a lost child within worker_lost_wait (10 s), then the task runs again
    bound = c.visibility(c.cpu_env)
    tasks = _figures(
        c,
        "cpu pool child kill -9",
        submitted,
        load,
        len(recoveries),
        recoveries,
        bound=bound,
        bound_name="cpu visibility timeout",
        notes=notes,
    )
    scanned.faults = len(merges)
    scanned.rerun += sum(1 for m in merges if m is not None)  # each killed merge ran again
    scanned.recovery_s = (
        None if not merges or None in merges else max(m for m in merges if m is not None)
    )
    scanned.bound_s, scanned.bound_name = bound, tasks.bound_name
    return [tasks, scanned]


def _kill_busy_child(c: Cluster, children: list[int], notes: list[str]) -> float | None:
    """kill -9 a child running a task (one never killed before: three kills make any task a
    poison); seconds until the task it ran completed again, None if it never did."""
    busy: dict[int, set[str]] = {}

    def find_busy() -> bool:
        busy.clear()
        for pid in children:
            fresh = {k for k in c.ledger.running_on({pid}) if c.ledger.starts(k) == 1}
            if fresh:
                busy[pid] = fresh
        return bool(busy)

    # a loaded machine may have both children between tasks at this instant: wait for one
    if until(find_busy, 10, interval=0.05) is None:
        notes.append("a kill found no child busy")
        return 0.0
    pid = random.choice(sorted(busy))
    fault = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    until(lambda: c.ledger.last_completion_of(busy[pid]) is not None, c.visibility(c.cpu_env) + 30)
    last = c.ledger.last_completion_of(busy[pid])
    return None if last is None else last - fault


def _kill_mid_merge(c: Cluster) -> float | None:
    """Arm the next merge to die in its middle; seconds from that death until its scan is done."""
    import redis

    from tests.support.killtasks import KILL_MERGE_KEY, KILLED_MERGE_KEY

    client = redis.Redis.from_url(c.env["LEWIS_BROKER_URL"], decode_responses=True)
    client.delete(KILLED_MERGE_KEY)
    client.set(KILL_MERGE_KEY, "1")
    if until(lambda: client.exists(KILLED_MERGE_KEY), 30) is None:
        client.delete(KILL_MERGE_KEY)
        return None
    when, scan_id = str(client.get(KILLED_MERGE_KEY)).split(" ", 1)
    finished = until(lambda: _scans_done({scan_id}), c.visibility(c.cpu_env) + 30, interval=0.2)
    return None if finished is None else finished - float(when)


def redis_kill(
    c: Cluster,
    down: float = 3.0,
    before: float = 4.0,
    after: float = 6.0,
    rate: float = 5.0,
    seconds: float = 0.3,
    patience: float = 60.0,
) -> Figures:
    """kill -9 the broker under io and cpu load, restart it ``down`` seconds later on the same
    port and AOF; workers must reconnect and nothing accepted may be lost."""
    return _broker_fault(
        c,
        "redis kill -9",
        before,
        after,
        rate,
        seconds,
        fault=lambda: c.redis.outage(down),
        patience=patience,
    )


def redis_pause(
    c: Cluster,
    paused: float = 7.0,
    before: float = 4.0,
    after: float = 6.0,
    rate: float = 5.0,
    seconds: float = 0.3,
    patience: float = 60.0,
) -> Figures:
    """SIGSTOP the broker for ``paused`` seconds (longer than the clients' socket timeouts)
    under load, then SIGCONT."""
    return _broker_fault(
        c,
        f"redis SIGSTOP {paused:.0f}s",
        before,
        after,
        rate,
        seconds,
        fault=lambda: c.redis.stall(paused),
        patience=patience,
    )


def _broker_fault(
    c: Cluster,
    name: str,
    before: float,
    after: float,
    rate: float,
    seconds: float,
    fault: Any,
    patience: float = 60.0,
) -> Figures:
    c.ledger.clear()
    io = SteadyLoad(tally_sender(c.ledger, "io", seconds, "io"), rate)
    cpu = SteadyLoad(tally_sender(c.ledger, "cpu", seconds, "cpu"), rate)
    with io, cpu:
        time.sleep(before)
        began = time.time()
        fault()
        ended = time.time()
        # recovered: every worker answers through the broker again and a task completed since
        answered: float | None = None
        while time.time() < ended + max(after, patience):
            if answered is None and c.names() <= answering(c.app):
                answered = time.time()
            if time.time() >= ended + after:
                io.stop()
                cpu.stop()
                if answered is not None:
                    break
            time.sleep(0.5)
    io.stop()
    cpu.stop()
    submitted = set(io.submitted) | set(cpu.submitted)
    wait_drained(c.ledger, submitted, c.visibility(c.cpu_env) + c.sweep() + patience / 2)
    first = c.ledger.first_completion_after(ended)
    recovery = None if answered is None or first is None else max(answered, first) - ended
    alive = answering(c.app)
    notes = [f"fault lasted {ended - began:.1f}s"]
    if not c.names() <= alive:
        notes.append(f"not answering after: {', '.join(sorted(c.names() - alive))}")
    figures = _figures(
        c,
        name,
        submitted,
        io,
        1,
        [recovery],
        bound=c.visibility(),
        bound_name="visibility timeout",
        notes=notes,
    )
    figures.refused += cpu.refused
    return figures


def _where_lost(c: Cluster, keys: set[str]) -> str:
    """Where the broker holds the lost tasks' messages now: still unacked (never restored),
    in a queue, or nowhere (the message itself is gone)."""
    import redis

    from .ledger import TASK_IDS

    ids = {c.ledger.client.hget(TASK_IDS, k) for k in keys} - {None}
    client = redis.Redis.from_url(c.env["LEWIS_BROKER_URL"])
    try:
        unacked = sum(1 for raw in client.hvals("unacked") if any(i.encode() in raw for i in ids))
        queued = sum(
            1
            for q in ("io", "cpu")
            for raw in client.lrange(q, 0, -1)
            if any(i.encode() in raw for i in ids)
        )
    except redis.RedisError as exc:
        return f"broker unreadable: {exc}"
    finally:
        client.close()
    return (
        f"their messages now: {unacked} unacked, {queued} queued, "
        f"{len(ids) - unacked - queued} nowhere"
    )


def _figures(
    c: Cluster,
    name: str,
    submitted: set[str],
    load: SteadyLoad,
    faults: int,
    recoveries: list[float | None],
    bound: float,
    bound_name: str,
    notes: list[str],
) -> Figures:
    figures = c.ledger.figures(name, submitted)
    figures.faults, figures.refused = faults, load.refused
    figures.notes = notes + figures.notes
    if figures.lost:
        figures.notes.append(_where_lost(c, submitted - c.ledger.completed()))
    figures.bound_s, figures.bound_name = bound, bound_name
    figures.recovery_s = (
        None
        if not recoveries or any(r is None for r in recoveries)
        else max(r for r in recoveries if r is not None)
    )
    return figures
