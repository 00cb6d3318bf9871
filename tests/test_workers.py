"""Worker profiles turn settings into `celery worker` command lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lewis_tasks.infra.config import load_settings
from workers import worker_argv, worker_options


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_cpu_profile_recycles_children_by_count_and_memory() -> None:
    s = load_settings(
        env={
            "LEWIS_MEMORY_MAX_HEAP_SIZE": "512MB",
            "LEWIS_WORKERS_CPU_MAX_TASKS_PER_CHILD": "77",
            "LEWIS_WORKERS_CPU_CONCURRENCY": "3",
        }
    )
    opts = worker_options("cpu", s)
    assert _opt(opts, "-P") == "prefork" and _opt(opts, "-c") == "3"
    assert _opt(opts, "--max-memory-per-child") == str(512 * 1024)  # KiB, as Celery wants
    assert _opt(opts, "--max-tasks-per-child") == "77"
    assert _opt(opts, "--prefetch-multiplier") == "1" and _opt(opts, "-Q") == "cpu"


def test_io_profile_uses_threads_sized_by_settings() -> None:
    s = load_settings(env={"LEWIS_WORKERS_IO_CONCURRENCY": "150"})
    opts = worker_options("io", s)
    assert (_opt(opts, "-P"), _opt(opts, "-c"), _opt(opts, "-Q")) == ("threads", "150", "io")
    s = load_settings(env={"LEWIS_PERFORMANCE_THREAD_POOL_SIZE": "33"})
    assert _opt(worker_options("io", s), "-c") == "33"  # the guide's thread_pool_size


def test_control_profile_can_answer_pings_while_busy() -> None:
    opts = worker_options("control", load_settings(env={}))
    assert _opt(opts, "-P") == "threads" and int(_opt(opts, "-c")) >= 2


def test_extra_options_pass_through_and_names_are_stable() -> None:
    s = load_settings(env={})
    a = worker_argv("io", s, extra=["--loglevel", "DEBUG"])
    b = worker_argv("io", s)
    assert a[-2:] == ["--loglevel", "DEBUG"]
    # the same name on every start (the host's or container's), so series survive a restart
    assert _opt(a, "-n") == _opt(b, "-n") == "io@%h"
    named = worker_argv("io", s, extra=["-n", "mine@%h"])
    assert named.count("-n") == 1


def test_a_second_worker_of_a_profile_on_a_host_takes_the_next_free_name(redis_url: str) -> None:
    import redis

    from lewis_tasks.infra.fleet import WORKER_KEY, free_node_name

    url = redis_url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        # Given no worker yet, the plain name; the same again while none holds it
        assert free_node_name(url, "io", "h1") == "io@h1" == free_node_name(url, "io", "h1")
        # When io@h1 is alive (its presence record), the next io worker there is io-2@h1
        for name in ("io@h1", "cpu@h1"):
            client.set(
                WORKER_KEY.format(name=name),
                json.dumps({"name": name, "queues": [name.split("@")[0]], "consuming": []}),
            )
        assert free_node_name(url, "io", "h1") == "io-2@h1"
        assert free_node_name(url, "io", "h2") == "io@h2"  # another host has its own
        # and without a broker the plain name (the worker then fails on the broker itself)
        assert free_node_name("redis://127.0.0.1:1/0", "io", "h1", timeout=0.2) == "io@h1"
    finally:
        client.flushdb()


def test_workers_started_at_the_same_moment_take_different_names(redis_url: str) -> None:
    import redis

    from lewis_tasks.infra.fleet import CLAIM_KEY

    url = redis_url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    script = (
        "import sys, time\n"
        "from lewis_tasks.infra.fleet import free_node_name\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "print(free_node_name(sys.argv[1], 'io', 'h1'), flush=True)\n"
        "sys.stdin.read()\n"  # alive until told: its claim stands while it starts
    )
    try:
        # Given four workers choosing their names at the same instant, none alive yet
        at = time.time() + 1.5
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, url, str(at)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        names = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
        # Then each has a name of its own
        assert sorted(names) == ["io-2@h1", "io-3@h1", "io-4@h1", "io@h1"]
        for p in procs:
            p.communicate("", timeout=10)
        # and a worker restarted after its process died takes its old name again
        holder = client.get(CLAIM_KEY.format(name="io@h1"))
        assert holder is not None and int(holder) in {p.pid for p in procs}
        again = subprocess.run(
            [sys.executable, "-c", script, url, "0"],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.stdout.strip() == "io@h1"
    finally:
        client.flushdb()


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown worker profile"):
        worker_options("gpu", load_settings(env={}))
