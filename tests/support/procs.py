"""Real ``lewis`` processes for tests: workers, beats, whole stacks; always reaped."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.wait import wait_for  # noqa: F401  (tests import it from here too)

ROOT = Path(__file__).resolve().parents[2]


def lewis_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEWIS_")}
    return {**base, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def logs_on_failure(folder: Path, lines: int = 40) -> Iterator[None]:
    """On an exception, print the last ``lines`` of every ``*.log`` under ``folder`` (the
    processes' own accounts of a failure pytest shows with the captured output)."""
    try:
        yield
    except BaseException:
        for log in sorted(folder.rglob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"----- {log.name} (last {len(tail)} lines) -----", *tail, sep="\n")
        raise


@contextlib.contextmanager
def lewis_process(
    args: Sequence[str], env: dict[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``lewis ARGS`` from ``cwd`` in its own process group; SIGKILL the group on the way
    out. Another ``cwd`` (no lewis.yaml, no .lewis/stack.json) is how tests play a second host."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lewis_tasks.cli", *args],
            cwd=cwd,
            env=lewis_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def worker_names(app, timeout: float = 0.5) -> set[str]:  # type: ignore[no-untyped-def]
    from lewis_tasks.infra.broker import live_workers

    return live_workers(app, timeout)


_CHUNK_DONE = re.compile(r"task lewis\.scan\.chunk\[([0-9a-f-]+)\] ok ")


def chunks_run(log: Path, scan_id: str) -> set[str]:
    """The chunks of scan ``scan_id`` a worker's log says it ran (the shared test broker may
    hand it another test's chunk too)."""
    found = set(_CHUNK_DONE.findall(log.read_text())) if log.exists() else set()
    return {task_id for task_id in found if task_id.startswith(f"{scan_id}-c")}
