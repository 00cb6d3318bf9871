"""Hand-written task messages (infra/messages.py) are the ones Celery writes, and a result is
awaited straight from Redis (infra/results.py): the producer's path without Celery's app."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from typing import Any

import pytest

from lewis_tasks.infra.messages import SENT_HEADER, signature, task_message
from lewis_tasks.infra.results import RESULT_KEY, ResultWaiter, decode_meta

VARYING = {SENT_HEADER}  # set at send time
VARYING_PROPERTIES = {"delivery_tag"}


def _celery_message(name: str, task_id: str, args: list[Any], errback: Any) -> dict[str, Any]:
    """What Celery's ``as_task_v2`` gives for the same call, as our transport JSON."""
    from lewis_tasks.infra.celery_app import app

    msg = app.amqp.as_task_v2(
        task_id,
        name,
        args,
        {},
        origin="gen1@host",
        argsrepr=None,
        kwargsrepr=None,
        errbacks=[app.signature(errback["task"], kwargs=errback["kwargs"])] if errback else None,
    )
    return {
        "headers": msg.headers,
        "properties": msg.properties,
        "body": json.loads(json.dumps(msg.body)),
    }


@pytest.mark.parametrize("with_errback", [False, True])
def test_a_hand_written_message_is_what_celery_writes(with_errback: bool) -> None:
    args: list[Any] = ["scan-1", 0, {"address": "127.0.0.1", "ports": "80"}, {"merge": True}]
    errback = signature("lewis.scan.fail", kwargs={"scan_id": "scan-1"}) if with_errback else None
    ours = json.loads(
        task_message(
            "lewis.scan.chunk",
            "scan-1-c0",
            args,
            {},
            "io",
            "gen1@host",
            0,
            errbacks=[errback] if errback else (),
        )
    )
    celery = _celery_message("lewis.scan.chunk", "scan-1-c0", args, errback)
    assert {k: v for k, v in ours["headers"].items() if k not in VARYING} == celery["headers"]
    assert isinstance(ours["headers"][SENT_HEADER], float)
    assert json.loads(base64.b64decode(ours["body"])) == celery["body"]
    properties = {k: v for k, v in ours["properties"].items() if k not in VARYING_PROPERTIES}
    assert properties == {
        **celery["properties"],
        "delivery_mode": 2,
        "priority": 0,
        "body_encoding": "base64",
        "delivery_info": {"exchange": "", "routing_key": "io"},
    }


def test_a_result_stored_before_or_after_the_wait_began_is_seen(redis_client: Any) -> None:
    url = redis_client.connection_pool.connection_kwargs
    address = f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}"
    when = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)
    stored = {
        "status": "SUCCESS",
        "result": {"at": {"__type__": "datetime", "__value__": when.isoformat()}},
    }
    # Given a result stored before anyone waits
    redis_client.set(RESULT_KEY.format(task_id="early"), json.dumps(stored))
    assert ResultWaiter(address, "early").wait(timeout=1.0)["result"] == {"at": when}
    # And one stored (and published) while the waiter listens, long before its re-read
    waiter = ResultWaiter(address, "late")
    assert waiter.wait(timeout=0.05) is None  # nothing yet: subscribed, still running

    def store() -> None:
        time.sleep(0.2)
        key = RESULT_KEY.format(task_id="late")
        payload = json.dumps({**stored, "status": "FAILURE"})
        redis_client.set(key, payload)
        redis_client.publish(key, payload)

    thread = threading.Thread(target=store)
    thread.start()
    try:
        meta = waiter.wait(timeout=30.0, interval=30.0)
    finally:
        thread.join()
        waiter.close()
    assert meta is not None and meta["status"] == "FAILURE"
    assert decode_meta(None) is None


def test_long_arguments_are_shown_cut_and_sent_whole() -> None:
    ports = ",".join(str(p) for p in range(1, 4000))
    message = json.loads(
        task_message("lewis.scan.chunk", "t", ["s", 0, {"ports": ports}], {}, "io", "o", 0)
    )
    assert len(message["headers"]["argsrepr"]) <= 1024
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args[2]["ports"] == ports
