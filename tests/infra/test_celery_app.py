"""The Celery app reconfigured at run time: it must follow its new broker everywhere."""

from __future__ import annotations

from typing import Any

import redis


def test_an_app_pointed_at_another_broker_publishes_and_broadcasts_there(
    lewis_settings: Any,
) -> None:
    from lewis_tasks.infra import config
    from lewis_tasks.infra.celery_app import configure_app, create_app

    # A private app on a db of its own: Celery's app.pool is kombu's process-wide pool for the
    # broker URL, so reconfiguring an app on the session app's URL closed that app's pool too
    # ("Acquire on closed pool" in later tests of the same run).
    base = lewis_settings.broker.url.rsplit("/", 1)[0]
    first, second = f"{base}/2", f"{base}/3"
    app = create_app(config.replace_section(lewis_settings, "broker", url=first))
    # Given an app that has broadcast and published through its first broker
    assert app.control.ping(timeout=0.05) == []
    redis.Redis.from_url(second).delete("cpu")
    # When it is pointed at another broker (a stack stopped, another one started)
    configure_app(app, config.replace_section(lewis_settings, "broker", url=second))
    # Then it broadcasts on the new one (its old producer pool was closed) and publishes there
    assert broadcast_lands(app, second)
    app.send_task("lewis.test.moved", queue="cpu")
    assert redis.Redis.from_url(second).llen("cpu") == 1
    redis.Redis.from_url(second).delete("cpu")


def broadcast_lands(app: Any, url: str) -> bool:
    """A ping broadcast by ``app`` is published on the Redis db at ``url``: the pidbox fanout
    is a Redis PUBLISH on a channel kombu prefixes with the db (``/3.celery.pidbox``)."""
    listener = redis.Redis.from_url(url).pubsub()
    listener.psubscribe(f"/{url.rsplit('/', 1)[1]}.*")
    try:
        listener.get_message(timeout=1.0)  # the psubscribe confirmation
        assert app.control.ping(timeout=0.05) == []
        message = listener.get_message(timeout=1.0)
        return message is not None and message["type"] == "pmessage"
    finally:
        listener.close()


def test_broadcasts_leave_the_producer_pool_closed_with_the_old_broker(lewis_settings: Any) -> None:
    from lewis_tasks.infra import config
    from lewis_tasks.infra.celery_app import configure_app, create_app

    base = lewis_settings.broker.url.rsplit("/", 1)[0]
    app = create_app(config.replace_section(lewis_settings, "broker", url=f"{base}/6"))
    # Given an app whose remote control has broadcast through its producer pool
    app.control.ping(timeout=0.05)
    old = app.control.mailbox.producer_pool
    # When the app is pointed at another broker (which closes that pool)
    configure_app(app, config.replace_section(lewis_settings, "broker", url=f"{base}/7"))
    # Then broadcasts draw from the app's new pool: the closed one ran dry later in a run and
    # every broadcast failed with 'Acquire on closed pool' (the chaos cluster never saw a worker)
    assert app.control.mailbox.producer_pool is not old
    assert app.control.mailbox.producer_pool is app.amqp.producer_pool
    assert broadcast_lands(app, f"{base}/7")


def test_an_app_pointed_away_and_back_publishes_on_its_first_broker_again(
    lewis_settings: Any,
) -> None:
    from lewis_tasks.infra import config
    from lewis_tasks.infra.celery_app import configure_app, create_app

    base = lewis_settings.broker.url.rsplit("/", 1)[0]
    first, second = f"{base}/4", f"{base}/5"
    app = create_app(config.replace_section(lewis_settings, "broker", url=first))
    other = create_app(config.replace_section(lewis_settings, "broker", url=first))
    # Given two apps that have published on one broker (kombu keeps one pool per broker URL)
    assert app.control.ping(timeout=0.05) == [] and other.control.ping(timeout=0.05) == []
    # When one is pointed at another broker and back (a test or a bench borrowing the app)
    configure_app(app, config.replace_section(lewis_settings, "broker", url=second))
    configure_app(app, config.replace_section(lewis_settings, "broker", url=first))
    configure_app(other, config.replace_section(lewis_settings, "broker", url=first))
    # Then both publish there again: the pool closed on the way out is not handed back
    redis.Redis.from_url(first).delete("cpu")
    app.send_task("lewis.test.back", queue="cpu")
    other.send_task("lewis.test.back", queue="cpu")
    assert app.control.ping(timeout=0.05) == []
    assert redis.Redis.from_url(first).llen("cpu") == 2
    redis.Redis.from_url(first).delete("cpu")


def test_only_workers_store_results_until_redis_is_back(lewis_settings: Any) -> None:
    from lewis_tasks.infra.celery_app import WORKER_TRANSPORT, configure_worker, create_app

    producer = create_app(lewis_settings)
    assert producer.backend.retry_policy["max_retries"] == 20  # a command fails on an outage
    worker = create_app(lewis_settings)
    worker.backend  # noqa: B018  (built before worker_init: must not keep the old policy)
    configure_worker(worker, lewis_settings)
    assert worker.backend.retry_policy["max_retries"] is None  # a finished task's result waits
    assert worker.conf.broker_transport == WORKER_TRANSPORT
    assert producer.conf.broker_transport != WORKER_TRANSPORT
