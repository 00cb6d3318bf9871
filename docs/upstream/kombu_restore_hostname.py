"""Minimal reproduction: kombu's Redis channel crashes restoring unacked messages after a
connection loss, with ``AttributeError: 'NoneType' object has no attribute 'hostname'``.

Needs only kombu, redis-py and a ``redis-server`` binary on PATH; runs its own server on a
free loopback port. What Celery's consumer does on a lost connection (consumer.py,
``on_connection_error_after_connected``) is ``connection.collect()`` then
``connection.close()``; the same two calls are made here.

    python kombu_restore_hostname.py                       # kombu's transport: AttributeError
    python kombu_restore_hostname.py lewis_tasks.infra.transport:Transport   # the workaround
"""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import kombu
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, data_dir: str) -> subprocess.Popen:
    server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--dir", data_dir],
                              stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            if redis.Redis(port=port).ping():
                return server
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    port, data_dir = free_port(), tempfile.mkdtemp()
    server = start_redis(port, data_dir)
    url = f"redis://127.0.0.1:{port}/0"
    queue = kombu.Queue("repro", routing_key="repro")
    with kombu.Connection(url) as producer:
        producer.Producer().publish({"n": 1}, routing_key="repro", declare=[queue])

    conn = kombu.Connection(url, transport=sys.argv[1] if len(sys.argv) > 1 else None)
    received = []
    # Celery's worker also consumes an auto-delete fanout queue (remote control, broadcast)
    broadcast = kombu.Queue("repro.broadcast", kombu.Exchange("repro.broadcast", "fanout"),
                            auto_delete=True)
    consumer = kombu.Consumer(conn.default_channel, [queue, broadcast], callbacks=[
        lambda body, message: received.append(message)])  # not acked: an in-flight task
    consumer.consume()
    conn.drain_events(timeout=2)
    assert received, "no message"
    with contextlib.suppress(TimeoutError):  # a BRPOP for the next message is now
        conn.drain_events(timeout=0.2)  # outstanding: the worker keeps polling

    server.kill()  # the broker goes away
    server.wait()
    try:
        conn.collect()  # fails to close the channel (its BRPOP read raises), detaches the transport
    except Exception as exc:
        print("collect():", repr(exc))
    conn.close()  # -> Channel.close -> QoS.restore_unacked -> Channel.pool -> _connparams:
    # AttributeError: 'NoneType' object has no attribute 'hostname'
    print("no error: fixed")


if __name__ == "__main__":
    main()
