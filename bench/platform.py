"""Platform benchmarks: LEWIS beside bare Celery defaults, same Redis, same run.

* latency — sequential submit → result round trips of a no-op (p50 / p99);
* drain — N no-ops pushed at once, time until the last result is written, 2 worker processes;
* enqueue — tasks/s one producer gets into Redis: `apply_async` per task vs `submit_many`;
* io_wait — 2,000 tasks that each wait 50 ms (ideal 0.5 s at 200-way concurrency).

Completion is counted with DBSIZE on a results-only Redis db: a result key is written when a
task ends, and DBSIZE costs O(1), so the counting does not slow what it measures.
The peers (huey, dramatiq, taskiq) go through the same shapes in bench/peers, on dbs 5-10 of
the same Redis; bench.run interleaves them with these.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from lewis_tasks.producer.base import submit, submit_many

from .harness import (
    baseline_worker_argv,
    db_url,
    lewis_env,
    lewis_worker_argv,
    percentile,
    processes,
    wait_results,
    wait_workers,
)

# db layout of the private Redis: each system gets a broker db and a results-only db
LEWIS_BROKER, LEWIS_RESULTS, BASE_BROKER, BASE_RESULTS = 1, 2, 3, 4


class System:
    """One side of the comparison: how to start its workers and talk to it."""

    def __init__(self, name: str, server: Any, home: Path) -> None:
        self.name = name
        self.server = server
        self.home = home
        if name.startswith("lewis"):
            self.broker, self.results = db_url(server, LEWIS_BROKER), db_url(server, LEWIS_RESULTS)
            self.env = lewis_env(
                self.broker,
                home,
                LEWIS_BROKER_RESULT_BACKEND=self.results,
                LEWIS_WORKERS_IO_CONCURRENCY="100",
            )
            self.app = _lewis_app(self.broker, self.results)
        else:
            self.broker, self.results = db_url(server, BASE_BROKER), db_url(server, BASE_RESULTS)
            self.env = {
                **lewis_env(self.broker, home),
                "BENCH_BROKER_URL": self.broker,
                "BENCH_BACKEND_URL": self.results,
            }
            self.app = Celery("baseline", broker=self.broker, backend=self.results)
        self.results_client = redis.Redis.from_url(self.results)
        self.broker_client = redis.Redis.from_url(self.broker)

    def task(self, kind: str) -> tuple[str, str]:
        """(task name, queue) for 'noop_io', 'noop_cpu' or 'sleep'."""
        if self.name.startswith("lewis"):
            return {
                "noop_io": ("lewis.bench.io_noop", "io"),
                "noop_cpu": ("lewis.bench.noop", "cpu"),
                "sleep": ("lewis.bench.io_sleep", "io"),
            }[kind]
        return {
            "noop_io": ("baseline.noop", "celery"),
            "noop_cpu": ("baseline.noop", "celery"),
            "sleep": ("baseline.sleep", "celery"),
        }[kind]

    def workers(self, kind: str) -> list[list[str]]:
        """Two worker processes' command lines for a workload."""
        if self.name == "lewis_prefork":  # the io profile on prefork: the pool choice's other side
            return [lewis_worker_argv("io", "-P", "prefork", "-c", "2") for _ in range(2)]
        if self.name == "lewis":
            if kind == "noop_cpu":
                return [lewis_worker_argv("cpu", "-c", "2")]  # one cpu worker: 2 pool processes
            # started at once, they still get names of their own (io@host, io-2@host: the claim
            # in infra/fleet.free_node_name)
            return [lewis_worker_argv("io") for _ in range(2)]
        if kind == "sleep":  # Celery's own answer to IO: the threads pool
            return [
                baseline_worker_argv("-P", "threads", "-c", "100", "-n", f"base{i}@%h")
                for i in range(2)
            ]
        return [baseline_worker_argv("-c", "2")]  # defaults: prefork, 2 children

    def send(self, name: str, queue: str) -> Any:
        """Submit one task the way each system's users do: LEWIS `submit`, Celery `send_task`."""
        if self.name.startswith("lewis"):
            return submit(name, app=self.app, queue=queue)
        return self.app.send_task(name, queue=queue)

    def wait(self, handle: Any) -> Any:
        """As each system's users wait: LEWIS by push with ``wait()``'s default (the key read
        again only after 1 s without the push); Celery's ``get`` (its Redis backend listens
        too) with a 0.5 ms interval."""
        if self.name.startswith("lewis"):
            return handle.wait(timeout=10)
        return handle.get(timeout=10, interval=0.0005)

    def reset(self) -> None:
        self.broker_client.flushdb()
        self.results_client.flushdb()


def _lewis_app(broker: str, results: str) -> Celery:
    from lewis_tasks.infra.celery_app import configure_app
    from lewis_tasks.infra.config import load_settings

    settings = load_settings(
        env={"LEWIS_BROKER_URL": broker, "LEWIS_BROKER_RESULT_BACKEND": results}
    )
    app = Celery("lewis-bench-producer")
    return configure_app(app, settings)


def bench_latency(system: System, samples: int = 400, warmup: int = 30) -> dict[str, Any]:
    name, queue = system.task("noop_io")
    system.reset()
    with processes(system.workers("noop_io")[:1], system.env, f"{system.name}-latency"):
        wait_workers(system.app, 1)
        for _ in range(warmup):  # warm-up: connections, result consumer subscription
            system.wait(system.send(name, queue))
        rtts = []
        for _ in range(samples):
            began = time.perf_counter()
            system.wait(system.send(name, queue))
            rtts.append((time.perf_counter() - began) * 1000)
    return {"p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99), "samples": samples}


def bench_drain(
    system: System, kind: str, count: int = 10_000, pack: int | None = 1
) -> dict[str, Any]:
    """``count`` no-ops pushed at once into running workers, timed until the last result.
    ``pack=1``: one call to a message, the dispatch path itself; ``None``: ``submit_many`` as
    shipped, packed by the task's measured runtime (a warm-up of 500 unpacked calls first gives
    the workers' reports a runtime to measure)."""
    name, queue = system.task(kind)
    system.reset()
    argvs = system.workers(kind)
    label = f"{system.name}-drain-{kind}" + ("-default" if pack is None else "")
    out: dict[str, Any] = {}
    with processes(argvs, system.env, label):
        wait_workers(system.app, len(argvs))
        if pack is None:
            out["pack"] = _measured_pack(system, name, queue)
        began = time.monotonic()
        submit_many(
            name,
            (((), {}) for _ in range(count)),
            app=system.app,
            queue=queue,
            batch=2000,
            pack=pack,
        )
        ended = wait_results(system.results_client, 0, count, timeout=count / 50)
    seconds = ended - began
    return {"tasks_per_s": count / seconds, "tasks": count, "seconds": seconds, **out}


def _measured_pack(system: System, name: str, queue: str) -> int:
    """Run 500 unpacked calls, wait for the workers to report their runtime, clear their
    results; the pack size submit_many will then choose."""
    from lewis_tasks.infra.metrics_store import recent_runtime_p95
    from lewis_tasks.producer.base import default_pack

    submit_many(name, [((), {})] * 500, app=system.app, queue=queue, pack=1)
    wait_results(system.results_client, 0, 500, timeout=60)
    deadline = time.monotonic() + 30  # the workers' reporters flush every 2 s
    while recent_runtime_p95(name, broker_url=system.broker) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no runtime of {name} reported within 30 s")
        time.sleep(0.2)
    system.results_client.flushdb()
    return default_pack(name, queue, system.broker)


def bench_enqueue(system: System, count: int = 5_000, batched: bool = False) -> dict[str, Any]:
    name, queue = system.task("noop_cpu")
    system.reset()
    began = time.perf_counter()
    if batched:
        submit_many(name, (((), {}) for _ in range(count)), app=system.app, queue=queue, batch=2000)
    else:
        for _ in range(count):
            system.send(name, queue)
    seconds = time.perf_counter() - began
    queued = system.broker_client.llen(queue)
    system.reset()
    if queued != count:
        raise RuntimeError(f"{system.name}: {queued} of {count} messages reached the queue")
    return {"tasks_per_s": count / seconds, "tasks": count}


def bench_io_wait(
    system: System, count: int = 2_000, wait: float = 0.05, pack: int = 1
) -> dict[str, Any]:
    name, queue = system.task("sleep")
    system.reset()
    argvs = system.workers("sleep")
    with processes(argvs, system.env, f"{system.name}-iowait"):
        wait_workers(system.app, len(argvs))
        began = time.monotonic()
        submit_many(
            name,
            (((wait,), {}) for _ in range(count)),
            app=system.app,
            queue=queue,
            batch=2000,
            pack=pack,
        )
        ended = wait_results(system.results_client, 0, count, timeout=120)
    return {"seconds": ended - began, "tasks": count, "ideal_s": count * wait / 200}
