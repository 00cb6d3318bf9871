"""``lewis worker``, ``lewis beat``, ``lewis flower``: exec the real Celery processes."""

from __future__ import annotations

import os

import click

from . import cli


def _loopback(address: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or interface name: assume it is reachable from outside


PASS_THROUGH = {
    "ignore_unknown_options": True,
    "allow_extra_args": True,
    "help_option_names": ["-h", "--help"],
}


def _exec(argv: list[str], env: dict[str, str] | None = None) -> None:
    from ..errors import ConfigError
    from ..infra.config import get_settings

    if not get_settings().broker.url:
        raise ConfigError(
            "no broker: set LEWIS_BROKER_URL, or start the embedded stack with "
            "`lewis up` (its broker is then found by itself)"
        )
    os.execvpe(argv[0], argv, {**os.environ, **(env or {})})


@cli.command(context_settings=PASS_THROUGH)
@click.argument("profile", type=click.Choice(["io", "cpu", "control"]))
@click.pass_context
def worker(ctx: click.Context, profile: str) -> None:
    """Start a worker of PROFILE (io, cpu or control); extra options go to `celery worker`."""
    import socket

    from ..infra.config import get_settings
    from ..infra.fleet import free_node_name
    from ..infra.profiles import worker_argv

    settings, extra = get_settings(), list(ctx.args)
    if not any(a in ("-n", "--hostname") or a.startswith("--hostname=") for a in extra):
        # io@host, or io-2@host beside a live io@host: stable names that survive a restart
        extra = ["-n", free_node_name(settings.broker.url, profile, socket.gethostname()), *extra]
    _exec(worker_argv(profile, settings, extra=extra))


@cli.command(context_settings=PASS_THROUGH)
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Start a beat; only one leads at a time, the others stand by and take over if it dies."""
    from ..infra.config import get_settings
    from ..infra.profiles import beat_argv

    _exec(beat_argv(get_settings(), extra=ctx.args))


@cli.command(context_settings=PASS_THROUGH)
@click.option("--port", type=int, default=None, help="Port (default: stack.flower_port or 5555).")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; widen it (e.g. 0.0.0.0 in a container) only behind auth.",
)
@click.option(
    "--unsafe-no-auth",
    is_flag=True,
    help="Serve a non-loopback address without basic auth (anyone who reaches it can "
    "revoke tasks and shut workers down).",
)
@click.pass_context
def flower(ctx: click.Context, port: int | None, address: str, unsafe_no_auth: bool) -> None:
    """Start the Flower monitor (basic auth from stack.flower_user/password)."""
    from ..errors import ConfigError
    from ..infra.config import get_settings
    from ..infra.profiles import flower_argv, flower_env

    settings = get_settings()
    if not _loopback(address) and not flower_env(settings) and not unsafe_no_auth:
        raise ConfigError(
            f"Flower on {address} without auth: set stack.flower_user and "
            "stack.flower_password (LEWIS_STACK_FLOWER_USER / _PASSWORD), bind 127.0.0.1, or "
            "pass --unsafe-no-auth"
        )
    _exec(
        flower_argv(
            settings, port or settings.stack.flower_port or 5555, extra=ctx.args, address=address
        ),
        env=flower_env(settings),
    )
