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

from lewis_tasks.infra.messages import (
    SENT_HEADER,
    chord_callback,
    message_origin,
    signature,
    task_message,
)
from lewis_tasks.infra.result_listener import listener
from lewis_tasks.infra.results import (
    CHORD_SIZE_KEY,
    RESULT_KEY,
    decode_meta,
    set_chord_size,
)

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


def _decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_a_hand_written_chord_is_what_celerys_canvas_sends(
    redis_client: Any, redis_url: str, tmp_path: Any
) -> None:
    from lewis_tasks.domain.targets import ScanChunk
    from lewis_tasks.infra import config
    from lewis_tasks.infra.celery_app import create_app
    from lewis_tasks.producer.scan import _send, chunk_task_id

    settings = config.load_settings(
        env={
            "LEWIS_BROKER_URL": redis_url,  # db 0: wiped around this test, no worker reads it
            "LEWIS_DATABASE_URL": f"sqlite:///{tmp_path / 'lewis.db'}",
        }
    )
    chunks = [ScanChunk.from_dict({"address": "127.0.0.1", "ports": p}) for p in ("1-9", "10-20")]
    options = {"rate": None, "services": False}
    # Given the chord Celery's canvas sends for a scan of two chunks (the rate-limited path)
    app = create_app(settings)
    try:
        merge_id = _send(app, "scan-1", chunks, options)
    finally:
        app.close()
    celery = [_decoded(m) for m in reversed(redis_client.lrange("io", 0, -1))]
    (size_key,) = redis_client.keys("celery-taskset-meta-*.s")
    group_id = size_key.decode().removeprefix("celery-taskset-meta-").removesuffix(".s")
    # When the same chord is written by hand
    body = chord_callback(
        "lewis.scan.merge",
        {"scan_id": "scan-1"},
        task_id=merge_id,
        group_id=group_id,
        errbacks=[signature("lewis.scan.fail", kwargs={"scan_id": "scan-1"})],
    )
    ours = [
        json.loads(
            task_message(
                "lewis.scan.chunk",
                chunk_task_id("scan-1", i),
                ["scan-1", i, c.to_dict(), options],
                {},
                "io",
                message_origin(),
                0,
                chord=(body, i),
            )
        )
        for i, c in enumerate(chunks)
    ]
    # Then every part is Celery's, but for what is set at send time, the reply queue of
    # Celery's result consumer (nobody reads it: results come by pub/sub) and the arguments'
    # display (the canvas shows them as a tuple, Flower only shows it)
    assert len(celery) == len(ours) == 2
    shown = VARYING | {"argsrepr"}
    limits = [settings.tasks.time_limit, settings.tasks.soft_time_limit]
    for theirs, mine in zip(celery, ours, strict=True):
        theirs["body"][2]["chord"]["options"].pop("reply_to")
        # The canvas copies the task's own time limits and ignore_result into the message
        # when this process has imported the task's module (another test may have), else
        # sends None, as ours does: a worker reads None as its task's own value.
        assert theirs["headers"].pop("timelimit") in ([None, None], limits)
        assert theirs["headers"].pop("ignore_result") in (None, False)
        assert mine["headers"].pop("timelimit") == [None, None]
        assert mine["headers"].pop("ignore_result") is None
        assert {k: v for k, v in mine["headers"].items() if k not in shown} == {
            k: v for k, v in theirs["headers"].items() if k not in shown
        }
        assert json.loads(base64.b64decode(mine["body"])) == theirs["body"]
        drop = VARYING_PROPERTIES | {"reply_to"}
        assert {k: v for k, v in mine["properties"].items() if k not in drop} == {
            k: v for k, v in theirs["properties"].items() if k not in drop
        }
    # And the chord's size is stored as Celery stores it, for as long
    set_chord_size(redis_url, "ours", 2, settings.broker.result_expires)
    mine_key = CHORD_SIZE_KEY.format(group_id="ours")
    assert redis_client.get(mine_key) == redis_client.get(size_key) == b"2"
    assert abs(redis_client.ttl(mine_key) - redis_client.ttl(size_key)) <= 1


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
    waiter = listener(address)
    assert waiter.wait("early", timeout=1.0)["result"] == {"at": when}
    # And one stored (and published) while the waiter listens, long before its re-read
    assert waiter.wait("late", timeout=0.05) is None  # nothing yet: subscribed, still running

    def store() -> None:
        time.sleep(0.2)
        key = RESULT_KEY.format(task_id="late")
        payload = json.dumps({**stored, "status": "FAILURE"})
        redis_client.set(key, payload)
        redis_client.publish(key, payload)

    thread = threading.Thread(target=store)
    thread.start()
    try:
        meta = waiter.wait("late", timeout=30.0, interval=30.0)
    finally:
        thread.join()
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
