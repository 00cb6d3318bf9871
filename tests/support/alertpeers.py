"""Real peers of the alert notifiers: a webhook receiver (aiohttp, loopback) that answers from
a script of status codes, and a real Alertmanager (Debian's ``prometheus-alertmanager``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from lewis_tasks.infra.redis_server import free_port
from tests.support.httpservers import serving
from tests.support.procs import wait_for

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@dataclass
class Receiver:
    """Every POST received (path, status answered, JSON body), and the statuses to answer."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)  # answered in order; then 200
    delay: float = 0.0  # seconds each answer waits (a slow receiver)
    received: list[tuple[str, int, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self, path: str = "") -> list[Any]:
        with self.lock:
            return [
                body for p, status, body in self.received if status == 200 and p.startswith(path)
            ]

    def answered(self, status: int) -> int:
        with self.lock:
            return sum(1 for _, s, _ in self.received if s == status)


def _receiver_app(receiver: Receiver) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        if receiver.delay:
            await asyncio.sleep(receiver.delay)
        with receiver.lock:
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            receiver.received.append((request.path, status, body))
        return web.Response(status=status, text="ok" if status == 200 else "no")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    return app


@contextlib.contextmanager
def webhook_receiver(*statuses: int, delay: float = 0.0) -> Iterator[Receiver]:
    receiver = Receiver(statuses=list(statuses), delay=delay)
    with serving() as thread:
        receiver.url = thread.start(_receiver_app(receiver)).url
        yield receiver


AM_CONFIG = """
route:
  receiver: hook
  group_by: ['alertname']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}/am
        send_resolved: true
"""


@contextlib.contextmanager
def alertmanager(tmp: Path, hook: str) -> Iterator[str]:
    """A real Alertmanager on loopback (no clustering) notifying ``hook``; yields its URL."""
    assert ALERTMANAGER, "prometheus-alertmanager is not installed (scripts/ci-deps installs it)"
    config = tmp / "alertmanager.yml"
    config.write_text(AM_CONFIG.format(hook=hook))
    port = free_port()
    log = open(tmp / "alertmanager.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 30, what="alertmanager ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def am_alerts(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as r:  # noqa: S310
        return json.loads(r.read())
