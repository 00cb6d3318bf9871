"""Stopping work (issue 17): a cancelled scan stops sending within a second, keeps what it had
scanned and ends ``cancelled``; ``lewis scans cancel`` says when there is nothing to cancel.

Real parts: the embedded worker, Redis, SQLite, and a loopback target whose listening ports
count every connection they accept (the traffic the scan sends).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from lewis_tasks.cli import cli
from lewis_tasks.domain.targets import format_ports
from lewis_tasks.errors import LewisError
from lewis_tasks.infra import planning
from lewis_tasks.producer.http import submit_http_batch, submit_loadtest
from lewis_tasks.producer.scan import ScanHandle, submit_scan
from tests.support.httpservers import RunningServer, ServerThread
from tests.support.procs import ROOT, lewis_env, wait_for
from tests.tasks.test_scan import settings_changed

ADDRESS = "127.88.5.3"  # a loopback address of its own
PORTS = 400
RATE = 40.0  # connects per second: the whole scan would take ~10 s


class CountingTarget:
    """``count`` listening ports on ``address``; :attr:`hits` counts the connections accepted."""

    def __init__(self, address: str, count: int) -> None:
        self.hits = 0
        self._selector = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        for _ in range(count):
            sock = socket.socket()
            sock.bind((address, 0))
            sock.listen(64)
            sock.setblocking(False)
            self._socks.append(sock)
            self._selector.register(sock, selectors.EVENT_READ)
        self.ports = sorted(s.getsockname()[1] for s in self._socks)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                try:
                    conn, _peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                conn.close()
                self.hits += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self._socks:
            sock.close()
        self._selector.close()


@pytest.fixture(scope="module")
def celery_worker(
    celery_app: Any, celery_includes: Any, celery_worker_pool: Any, celery_worker_parameters: Any
) -> Iterator[Any]:
    from celery.contrib.testing import worker

    with worker.start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


@pytest.fixture
def target() -> Iterator[CountingTarget]:
    running = CountingTarget(ADDRESS, PORTS)
    try:
        yield running
    finally:
        running.close()


def _slow_scan(target: CountingTarget, chunk_ports: int) -> ScanHandle:
    """A rate-limited scan of every port of ``target`` in chunks of ``chunk_ports`` (one chunk:
    one task that merges in place; more: a chain per host inside a chord)."""
    one = chunk_ports >= PORTS
    # one chunk of the whole ~10 s needs a budget above the tests' 30 s soft limit's share
    with (
        settings_changed(
            scan={"chunk_ports": chunk_ports},
            tasks={"soft_time_limit": 120, "time_limit": 150} if one else {},
        ),
        _waves(0 if one else planning.SCAN_WAVES),
    ):
        return submit_scan([ADDRESS], ports=format_ports(target.ports), rate=RATE, services=False)


@contextlib.contextmanager
def _waves(waves: int) -> Iterator[None]:
    # 0 turns off the split into waves of the io slots (as bench/fleet.py's A/B does)
    previous, planning.SCAN_WAVES = planning.SCAN_WAVES, waves
    try:
        yield
    finally:
        planning.SCAN_WAVES = previous


def _cancel_and_count(handle: ScanHandle, target: CountingTarget) -> tuple[int, int]:
    """Cancel once the target sees traffic; its hit counts 1 s and 3 s after the cancel."""
    wait_for(lambda: target.hits >= 20, timeout=30, what="the scan reaching the target")
    assert handle.cancel() is True
    time.sleep(1.0)
    settled = target.hits
    time.sleep(2.0)
    return settled, target.hits


@pytest.mark.parametrize("chunk_ports", [PORTS, 50], ids=["one-task", "chained-chunks"])
def test_a_cancelled_scan_stops_its_traffic_within_a_second(
    target: CountingTarget, celery_worker: Any, chunk_ports: int
) -> None:
    handle = _slow_scan(target, chunk_ports)
    assert (handle.progress().chunks_total == 1) == (chunk_ports >= PORTS)
    at_one, at_three = _cancel_and_count(handle, target)
    # Then nothing reaches the target after the first second, well before the scan's end
    assert at_three == at_one < PORTS
    # and the scan ends cancelled, with the ports it had scanned recorded
    wait_for(
        lambda: handle.progress().chunks_done >= 1,
        timeout=10,
        what="the running chunk recording its part",
    )
    progress = handle.progress()
    assert progress.status == "cancelled"
    assert 0 < progress.ports_done < PORTS and progress.open_count > 0
    with pytest.raises(LewisError, match="cancelled"):
        handle.wait(timeout=5)
    # and a second cancel is harmless: nothing to do, the status stays
    assert handle.cancel() is False
    assert handle.progress().status == "cancelled"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_lewis_scans_cancel_then_show_then_cancel_again(
    target: CountingTarget, celery_worker: Any
) -> None:
    handle = _slow_scan(target, PORTS)
    wait_for(lambda: target.hits >= 5, timeout=30, what="the scan reaching the target")
    first = run("scans", "cancel", handle.id[:12])
    assert first.exit_code == 0 and first.output.strip() == f"scan {handle.id} cancelled"
    again = run("scans", "cancel", handle.id)
    assert again.exit_code == 0 and "cancelled already" in again.output
    shown = run("scans", "show", handle.id, "--json")
    assert '"status": "cancelled"' in shown.output


def test_lewis_scans_cancel_on_a_finished_scan_says_so(
    target: CountingTarget, celery_worker: Any
) -> None:
    with settings_changed(scan={"chunk_ports": PORTS}):
        handle = submit_scan([ADDRESS], ports=format_ports(target.ports[:5]), services=False)
    handle.wait(timeout=30)
    result = CliRunner().invoke(cli, ["scans", "cancel", handle.id])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has ended (done)" in lines[0]
    assert handle.progress().status == "done"


# ---------------------------------------------------------------- HTTP batches

URLS = 2000  # of a one-second page, 100 at a time (network.max_connections): ~20 s of work


@pytest.fixture(scope="module")
def slow_server(serve: ServerThread) -> RunningServer:
    return serve.start("app", "127.0.0.1")


def _http_hits(server: RunningServer) -> int:
    return sum(server.hits.values())


def test_a_cancelled_http_batch_stops_its_requests_within_a_second(
    slow_server: RunningServer, celery_worker: Any
) -> None:
    handle = submit_http_batch([f"{slow_server.url}/delay/1000?i={i}" for i in range(URLS)])
    wait_for(
        lambda: _http_hits(slow_server) >= 50, timeout=30, what="the batch reaching the server"
    )
    assert handle.cancel() is True
    time.sleep(1.0)
    at_one = _http_hits(slow_server)
    time.sleep(2.0)
    # Then nothing reaches the server after the first second, long before the batch's end
    assert _http_hits(slow_server) == at_one < URLS
    # and the batch ends cancelled, the fetched rows kept, the rest marked cancelled
    with pytest.raises(LewisError, match="cancelled"):
        handle.wait(timeout=10)
    assert handle.progress()["status"] == "cancelled"
    wait_for(lambda: handle.progress()["ok"] > 0, timeout=10, what="the fetched rows")
    assert handle.cancel() is False  # twice: harmless


def test_lewis_http_cancel_then_again_then_on_a_finished_batch(
    slow_server: RunningServer, celery_worker: Any
) -> None:
    handle = submit_http_batch([f"{slow_server.url}/delay/1000?i={i}" for i in range(URLS)])
    first = run("http", "cancel", handle.id)
    assert first.exit_code == 0 and first.output.strip() == f"HTTP batch {handle.id} cancelled"
    again = run("http", "cancel", handle.id)
    assert again.exit_code == 0 and "cancelled already" in again.output
    done = submit_http_batch([f"{slow_server.url}/delay/1"])
    done.wait(timeout=30)
    ended = CliRunner().invoke(cli, ["http", "cancel", done.id])
    assert ended.exit_code != 0
    assert (
        ended.stderr.strip() == f"lewis: HTTP batch {done.id} has ended (done): nothing to cancel"
    )


# ---------------------------------------------------------------- Ctrl-C on `lewis scan`


def _interrupted(
    settings: Any, args: list[str], reached: Callable[[], bool], what: str, presses: int = 1
) -> tuple[int, str, str]:
    """Run ``lewis ARGS`` against the test stack; once ``reached()``, press Ctrl-C ``presses``
    times. (exit code, stdout, stderr)."""
    env = lewis_env(
        {
            "LEWIS_BROKER_URL": settings.broker.url,
            "LEWIS_DATABASE_URL": settings.database.url,
            "LEWIS_STACK_HOME": str(settings.stack.home),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lewis_tasks.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(reached, timeout=60, what=what)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, err


def _latest_scan() -> ScanHandle:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.producer.scan import scan_handle
    from lewis_tasks.storage import scans
    from lewis_tasks.storage.db import session_scope

    with session_scope(get_engine()) as session:
        return scan_handle(scans.list_scans(session, limit=1)[0].id)


@pytest.mark.parametrize("presses", [1, 2], ids=["once-cancels", "twice-leaves-running"])
def test_ctrl_c_on_lewis_scan(
    target: CountingTarget, celery_worker: Any, lewis_settings: Any, presses: int
) -> None:
    code, _out, err = _interrupted(
        lewis_settings,
        ["scan", ADDRESS, "-p", format_ports(target.ports), "--rate", str(RATE), "--no-services"],
        lambda: target.hits >= 5,
        "the scan reaching the target",
        presses,
    )
    handle = _latest_scan()
    assert code == 130
    if presses == 1:
        assert f"scan {handle.id} cancelled" in err
        assert handle.progress().status == "cancelled"
    else:
        assert f"left running: scan {handle.id}" in err
        assert handle.progress().status == "running"
        assert handle.cancel() is True


def test_ctrl_c_on_lewis_http_cancels_the_batch(
    slow_server: RunningServer, celery_worker: Any, lewis_settings: Any, tmp_path: Any
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{slow_server.url}/delay/1000?i={i}\n" for i in range(URLS)))
    before = _http_hits(slow_server)
    code, _out, err = _interrupted(
        lewis_settings,
        ["http", "-f", str(urls)],
        lambda: _http_hits(slow_server) - before >= 20,
        "the batch reaching the server",
    )
    assert code == 130
    line = next(x for x in err.splitlines() if x.startswith("HTTP batch "))
    batch_id = line.split()[2]
    assert line.endswith("cancelled; what it had done is kept")
    from lewis_tasks.producer.http import cancel_http_batch

    assert cancel_http_batch(batch_id) is False  # cancelled already
    time.sleep(1.0)  # the cancel was sent before the command exited
    at = _http_hits(slow_server)
    time.sleep(1.0)
    assert _http_hits(slow_server) == at


# ---------------------------------------------------------------- load tests


def test_a_cancelled_load_test_stops_its_traffic_within_a_second(
    slow_server: RunningServer, celery_worker: Any
) -> None:
    # Given a 20 s load test hitting the server
    before = _http_hits(slow_server)
    handle = submit_loadtest(f"{slow_server.url}/delay/20", concurrency=4, duration=20)
    wait_for(
        lambda: _http_hits(slow_server) - before >= 40,
        timeout=30,
        what="the load test reaching the server",
    )
    # When it is cancelled
    assert handle.cancel() is True
    time.sleep(1.0)
    at_one = _http_hits(slow_server)
    time.sleep(2.0)
    # Then nothing reaches the server after the first second
    assert _http_hits(slow_server) == at_one
    # and the result covers the time it ran, marked cancelled, stored as such
    result = handle.wait(timeout=30)
    assert result.cancelled is True and result.to_dict()["cancelled"] is True
    assert 0 < result.requests <= at_one - before
    assert result.duration_s < 15
    run = handle.result()
    assert run is not None and run.status == "cancelled"
    assert handle.cancel() is False  # it has ended: nothing to cancel


def test_lewis_loadtest_cancel_then_on_an_ended_and_an_unknown_run(
    slow_server: RunningServer, celery_worker: Any
) -> None:
    handle = submit_loadtest(f"{slow_server.url}/delay/20", concurrency=2, duration=20)
    first = run("loadtest", "cancel", handle.id)
    assert first.exit_code == 0 and first.output.strip() == f"load test {handle.id} cancelled"
    assert handle.wait(timeout=30).cancelled is True
    ended = CliRunner().invoke(cli, ["loadtest", "cancel", handle.id])
    assert ended.exit_code == 1
    assert ended.stderr.strip() == (
        f"lewis: load test {handle.id} has ended or was cancelled already: nothing to cancel"
    )
    unknown = CliRunner().invoke(cli, ["loadtest", "cancel", "no-such-run"])
    assert unknown.exit_code == 2 and "no such load test" in unknown.stderr


def test_ctrl_c_on_lewis_loadtest_stops_it_and_prints_what_it_measured(
    slow_server: RunningServer, celery_worker: Any, lewis_settings: Any
) -> None:
    before = _http_hits(slow_server)
    code, out, err = _interrupted(
        lewis_settings,
        ["loadtest", f"{slow_server.url}/delay/20", "-c", "4", "-d", "20s", "--json"],
        lambda: _http_hits(slow_server) - before >= 40,
        "the load test reaching the server",
    )
    # as wrk and locust: the run ends, its figures are printed, the exit says interrupted
    assert code == 130, err
    assert "cancelled; what it had done is kept" in err
    printed = json.loads(out)
    assert printed["cancelled"] is True and printed["requests"] > 0
    at = _http_hits(slow_server)
    time.sleep(1.0)
    assert _http_hits(slow_server) == at
