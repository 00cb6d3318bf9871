"""`lewis scale status|plan|set|export --keda` on a real Redis and SQLite."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from lewis_tasks.infra.redis_server import EmbeddedRedis
from lewis_tasks.infra.scaling import OVERRIDE_KEY
from tests.conftest import stack_env
from tests.test_cli import lewis


def env_of(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return stack_env(redis_url, tmp_path, **extra)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own. On the suite's shared one, `scale plan` twice found
    fresh queue gauges in CI (3 pytest processes) that no test of this module wrote, written by
    whatever else ran in the same pytest process, and acted on them (desired 3, not None)."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_set_plan_status_with_json(own_redis: str, tmp_path: Path) -> None:
    env = env_of(own_redis, tmp_path)
    env["LEWIS_BROKER_URL"] = own_redis
    assert lewis("db", "upgrade", env=env).returncode == 0
    worker_redis = redis.Redis.from_url(own_redis)
    try:
        # an override for 10 minutes
        done = lewis("scale", "set", "io", "3", "--for", "10m", "--json", env=env)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert (
            out["override"] == 3
            and 590 < worker_redis.pttl(OVERRIDE_KEY.format(queue="io")) / 1000 <= 600
        )
        # plan: nothing measured here, so no action, and it says why; the override is an input
        done = lewis("scale", "plan", "--json", env=env)
        assert done.returncode == 0, done.stderr
        plan = {d["queue"]: d for d in json.loads(done.stdout)}
        reason = plan["io"]["reason"]
        assert plan["io"]["desired"] is None, plan["io"]
        assert "no ready" in reason or "metrics are stale" in reason, reason
        done = lewis("scale", "status", "--json", env=env)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["queues"]["io"]["override"]["workers"] == 3
        assert status["queues"]["io"]["decisions"] == []
        text = lewis("scale", "status", env=env).stdout
        assert "override 3 until" in text and "no decision yet" in text
        # auto ends it
        assert "override ended" in lewis("scale", "set", "io", "auto", env=env).stdout
        assert worker_redis.get(OVERRIDE_KEY.format(queue="io")) is None
    finally:
        worker_redis.close()


def test_bad_override_is_one_line_exit_2(redis_url: str, tmp_path: Path) -> None:
    env = env_of(redis_url, tmp_path)
    for args, text in (
        (("io", "two"), "whole number or 'auto'"),
        (("io", "2", "--for", "soon"), "expected a duration"),
        (("control", "2"), "'control' is not one of"),
    ):
        done = lewis("scale", "set", *args, env=env)
        assert done.returncode == 2 and text in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_export_keda_names_the_real_lists_and_the_same_targets(tmp_path: Path) -> None:
    env = {
        "LEWIS_STACK_HOME": str(tmp_path),
        "LEWIS_BROKER_URL": "rediss://:secret@broker:6380/2",
        "LEWIS_SCALING_IO_MAX_WORKERS": "7",
        "LEWIS_SCALING_IO_TARGET_PER_WORKER": "15",
        "LEWIS_SCALING_ACTIVATION_THRESHOLD": "2",
    }
    done = lewis("scale", "export", "--keda", env=env)
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout
    objs = {o["metadata"]["name"]: o for o in yaml.safe_load_all(done.stdout)}
    io = objs["lewis-worker-io"]["spec"]
    # io_min_workers not set: one per core of the machine that exported, within the maximum
    cores = min(len(os.sched_getaffinity(0)), 7)
    assert (io["minReplicaCount"], io["maxReplicaCount"], io["cooldownPeriod"]) == (cores, 7, 300)
    lists = [t["metadata"]["listName"] for t in io["triggers"]]
    assert lists == ["io", "io\x06\x163", "io\x06\x166", "io\x06\x169"]
    first = io["triggers"][0]["metadata"]
    assert first == {
        "address": "broker:6380",
        "databaseIndex": "2",
        "enableTLS": "true",
        "listName": "io",
        "listLength": "15",
        "activationListLength": "2",
    }
    assert objs["lewis-worker-cpu"]["spec"]["triggers"][0]["metadata"]["listName"] == "cpu"
