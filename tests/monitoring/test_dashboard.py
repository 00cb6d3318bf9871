"""The live dashboard: frames over the WebSocket, slow clients dropped not waited for, and a
real headless chromium watching the numbers change while real workers run tasks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import ClientSession, web

from lewis_tasks.infra.metrics_store import MetricStore
from lewis_tasks.infra.redis_server import free_port
from lewis_tasks.monitor import server
from lewis_tasks.monitor.view import MonitorView
from tests.conftest import stack_env
from tests.support.procs import lewis_process, wait_for, worker_names

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_a_full_client_queue_drops_its_oldest_frame() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=server.CLIENT_QUEUE)
    stats = {"dropped": 0}
    for i in range(10):
        server.offer(queue, f"frame{i}", stats)
    assert queue.qsize() == server.CLIENT_QUEUE and stats["dropped"] == 8
    assert [queue.get_nowait() for _ in range(2)] == ["frame8", "frame9"]


def test_stalled_websocket_clients_never_hold_up_a_live_one(redis_client: redis.Redis) -> None:
    async def scenario() -> tuple[int, int]:
        app = server.make_app(MonitorView(MetricStore(redis_client, 1, 3600, 100)))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stalled = []
        try:
            # Given ten clients that open a WebSocket and then never read a byte
            for _ in range(10):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                stalled.append(sock)
            # When a live client connects
            frames = 0
            async with (
                ClientSession() as session,
                session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws,
            ):
                for _ in range(3):  # then it gets a frame every second regardless
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    frame = json.loads(msg.data)
                    assert "queues" in frame and "history" in frame
                    frames += 1
            # and no client ever holds more than CLIENT_QUEUE frames
            held = max((q.qsize() for q in app[server.CLIENTS]), default=0)
            return frames, held
        finally:
            for sock in stalled:
                sock.close()
            await runner.cleanup()

    frames, held = asyncio.run(scenario())
    assert frames == 3 and held <= server.CLIENT_QUEUE


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed "
    "(scripts/ci-deps installs them)",
)
def test_the_page_shows_tasks_and_workers_change_live(
    redis_url: str, tmp_path: Path, lewis_settings: Any, celery_app: Any, worker_redis: redis.Redis
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from lewis_tasks.producer.base import submit_many, wait_all

    for key in worker_redis.scan_iter("lewis:metrics:*"):
        worker_redis.delete(key)
    env = stack_env(
        redis_url,
        tmp_path,
        LEWIS_DATABASE_URL=lewis_settings.database.url,
        LEWIS_MONITORING_METRICS_INTERVAL="1",
        LEWIS_MONITORING_REPORT_INTERVAL="0.5",
    )
    port = free_port()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(arg)
    # Given a cpu worker, the control worker and beat (collection), and the monitor
    with (
        lewis_process(["worker", "cpu", "-c", "2", "-n", "dash-cpu@%h"], env, tmp_path / "cpu.log"),
        lewis_process(["worker", "control", "-n", "dash-control@%h"], env, tmp_path / "c.log"),
        lewis_process(["beat"], env, tmp_path / "beat.log"),
        lewis_process(["monitor", "--port", str(port)], env, tmp_path / "monitor.log"),
    ):
        wait_for(
            lambda: (
                {n.split("@")[0] for n in worker_names(celery_app)} >= {"dash-cpu", "dash-control"}
            ),
            60,
            what="workers",
        )
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # type: ignore[arg-type]
        try:
            driver.get(f"http://127.0.0.1:{port}/")

            def text(element_id: str) -> str:
                return str(driver.find_element(By.ID, element_id).text)

            def number(element_id: str) -> int:
                value = text(element_id).replace(",", "")
                return int(value) if value.isdigit() else -1

            wait_for(lambda: text("state") == "live", 30, what="the page's live state")
            wait_for(
                lambda: "dash-cpu" in text("workers") and "up" in text("workers"),
                30,
                what="the cpu worker listed as up",
            )
            before = number("total-succeeded")
            assert before >= 0
            # When 300 tasks run
            wait_all(submit_many("lewis.bench.noop", [((), {})] * 300), timeout=120)
            # Then the page's numbers follow without a reload
            wait_for(
                lambda: number("total-succeeded") >= before + 300,
                30,
                what="succeeded +300 on the page",
            )
            wait_for(lambda: "lewis.bench.noop" in text("tasks"), 30, what="the task table")
            assert number("q-cpu-ready") >= 0
            shot = Path(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        finally:
            driver.quit()
