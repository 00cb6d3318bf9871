"""What submit_scan refuses, it refuses before anything reaches the queue or the database.

No worker runs in this module, so a message that slipped through would still sit in its queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from lewis_tasks.errors import InvalidInput, OutOfScope
from lewis_tasks.infra import config
from lewis_tasks.infra.broker import queue_depths
from lewis_tasks.infra.database import get_engine
from lewis_tasks.producer.scan import scan_handle, submit_scan
from lewis_tasks.storage import scans
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import ScanRow


@contextmanager
def settings_changed(section: str, **values: Any) -> Iterator[None]:
    previous = config.get_settings()
    config.set_settings(config.replace_section(previous, section, **values))
    try:
        yield
    finally:
        config.set_settings(previous)


def state(worker_redis: Any) -> tuple[dict[str, int], int]:
    """Messages waiting or unacked per queue, and scan rows."""
    with session_scope(get_engine()) as session:
        rows = int(session.scalar(select(func.count()).select_from(ScanRow)) or 0)
    return {q: d.total for q, d in queue_depths(worker_redis).items()}, rows


@pytest.mark.parametrize(
    ("targets", "ports", "error", "named"),
    [
        (["127.0.0.1", "10.9.8.7"], "22", OutOfScope, "10.9.8.7"),
        (["0.0.0.0"], "22", OutOfScope, "0.0.0.0"),
        (["300.1.2.3"], "22", InvalidInput, "'300.1.2.3'"),
        (["127.0.0.1", "bad_host!"], "22", InvalidInput, "'bad_host!'"),
        (["127.0.0.1"], "22,99999", InvalidInput, "'99999'"),
        (["127.0.0.1"], "80-20", InvalidInput, "'80-20'"),
        (["127.0.0.1"], "top0", InvalidInput, "'top0'"),
    ],
)
def test_bad_and_out_of_scope_input_is_refused_naming_the_token(
    lewis_settings: Any,
    worker_redis: Any,
    targets: list[str],
    ports: str,
    error: type[Exception],
    named: str,
) -> None:
    before = state(worker_redis)
    with pytest.raises(error, match=named.replace(".", r"\.")):
        submit_scan(targets, ports=ports)
    assert state(worker_redis) == before


def test_a_rate_of_zero_is_refused(lewis_settings: Any, worker_redis: Any) -> None:
    before = state(worker_redis)
    with pytest.raises(InvalidInput, match="rate"):
        submit_scan("127.0.0.1", ports="22", rate=0)
    assert state(worker_redis) == before


def test_over_cap_scans_are_refused_with_the_cap_named(
    lewis_settings: Any, worker_redis: Any
) -> None:
    before = state(worker_redis)
    with (
        settings_changed("scan", max_ports_total=1000),
        pytest.raises(InvalidInput, match=r"over the cap of 1000 \(scan\.max_ports_total\)"),
    ):
        submit_scan(["127.0.0.1", "127.0.0.2"], ports="1-600")
    with pytest.raises(InvalidInput, match=r"scan\.max_hosts"):
        submit_scan("127.0.0.0/16", ports="22")
    assert state(worker_redis) == before


def test_past_max_concurrent_scans_a_new_scan_is_refused(
    lewis_settings: Any, worker_redis: Any, celery_app: Any
) -> None:
    from lewis_tasks.infra.runningscans import release_scan_slot, running_scans

    lifetime = lewis_settings.broker.result_expires
    running = len(running_scans(worker_redis, lifetime))
    submitted = []
    with settings_changed("performance", max_concurrent_scans=running + 2):
        try:
            # Given as many running scans as the cap allows (no worker: they stay running), a
            # one-chunk scan (which no database row counts yet) and a chorded one
            submitted.append(submit_scan("127.0.0.1", ports="22", services=False))
            with settings_changed("scan", chunk_ports=1):
                submitted.append(submit_scan("127.0.0.1", ports="22,80", services=False))
            assert len(running_scans(worker_redis, lifetime)) == running + 2
            before = state(worker_redis)
            # Then the next one is refused, naming the cap, and nothing more is queued
            with pytest.raises(
                InvalidInput, match=r"cap is \d+ \(performance\.max_concurrent_scans\)"
            ):
                submit_scan("127.0.0.1", ports="22")
            assert state(worker_redis) == before
        finally:
            celery_app.control.purge()
            for handle in submitted:
                release_scan_slot(worker_redis, handle.id)
                with session_scope(get_engine()) as session:
                    scans.set_scan_status(session, handle.id, "cancelled", error="test over")


@pytest.mark.parametrize("address", ["10.0.0.5", "192.0.2.7", "::ffff:10.0.0.5"])
def test_a_chunk_cannot_borrow_a_names_standing_for_another_address(
    lewis_settings: Any, address: str
) -> None:
    # Given a hand-made chunk message that pairs the allowed name "localhost" with a foreign
    # address (anyone who can publish to the broker could send one)
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from lewis_tasks.domain.scope import Scope
    from lewis_tasks.domain.targets import ScanChunk
    from lewis_tasks.tasks.scan import _resolve_and_run

    part = ScanChunk(address=address, hostname="localhost", ports="22", port_count=1)
    scope = Scope.from_allow(lewis_settings.scope.allow)
    # Then the worker refuses it before any connection, naming both
    with (
        ThreadPoolExecutor(1) as executor,
        pytest.raises(OutOfScope, match="is not an address of localhost"),
    ):
        asyncio.run(
            _resolve_and_run(
                part,
                scope,
                deadline=1e18,
                settings=lewis_settings,
                limiter=None,
                identify=False,
                concurrency=1,
                publish=None,
                executor=executor,
            )
        )


def test_localhost_means_loopback_whatever_the_resolver_says() -> None:
    from lewis_tasks.domain.scope import DEFAULT_ALLOW, Scope

    scope = Scope.from_allow(DEFAULT_ALLOW)
    for name in ("localhost", "LOCALHOST.", "api.localhost", "localhost.localdomain"):
        assert {str(a) for a in scope.resolve(name)} == {"127.0.0.1", "::1"}


def test_a_one_chunk_scan_no_worker_took_is_shown_queued(
    lewis_settings: Any, worker_redis: Any, celery_app: Any
) -> None:
    from click.testing import CliRunner

    from lewis_tasks.cli import cli
    from lewis_tasks.infra.runningscans import release_scan_slot

    # Given a one-chunk scan waiting in the queue (no worker runs here: it has no row yet)
    handle = submit_scan("127.0.0.1", ports="22", services=False)
    try:
        # Then `lewis scans show` says it is queued, and waiting on it by id reads it running
        shown = CliRunner().invoke(cli, ["scans", "show", handle.id, "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output) == {"scan_id": handle.id, "status": "queued"}
        assert scan_handle(handle.id).progress().status == "running"
    finally:
        celery_app.control.purge()
        release_scan_slot(worker_redis, handle.id)
    # And once it holds no slot, it is no scan at all
    gone = CliRunner().invoke(cli, ["scans", "show", handle.id])
    assert gone.exit_code == 2 and "no such scan" in gone.output
