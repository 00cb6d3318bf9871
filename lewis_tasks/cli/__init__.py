"""``lewis``: the command line. A click group; each area adds its commands in its own module.

Exit codes are named (:class:`Exit`): a bad setting or bad input is 2, an unreachable broker
is 3, findings at ``lewis scan --fail-on``'s severity are 4, and every LewisError prints one
line — never a traceback. Output into a pipe closed early (``lewis scans list | head -1``)
ends quietly with 141, as a tool killed by SIGPIPE does.
"""

from __future__ import annotations

import enum
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from ..errors import BrokerUnavailable, ConfigError, InvalidInput, LewisError, TransientError
from ..infra.config import MAX_NUMBER

F = TypeVar("F", bound=Callable[..., Any])


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1  # the work ran and failed
    USAGE = 2  # bad arguments, bad settings, bad input: fix the command
    UNAVAILABLE = 3  # broker / stack not reachable
    FINDINGS = 4  # lewis scan --fail-on: a finding at least that severe
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader went away (`| head`)


def quiet_broken_pipe() -> None:
    """The reader of stdout has gone: point stdout at /dev/null (so Python's own flush at exit
    says nothing) and exit as a SIGPIPE-killed tool would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(int(Exit.BROKEN_PIPE))


CANCEL_GRACE = 0.5  # seconds after a first Ctrl-C in which a second one leaves the job running


def cancel_on_interrupt(what: str, cancel: Callable[[], bool]) -> NoReturn:
    """The first Ctrl-C while waiting on a job (``what``: "scan 42f1…"): cancel it, unless a
    second Ctrl-C comes within :data:`CANCEL_GRACE`, which leaves it running. Says which, and
    exits 130 either way."""
    cancel_or_leave(what, cancel)
    sys.exit(int(Exit.INTERRUPTED))


def cancel_or_leave(what: str, cancel: Callable[[], bool]) -> bool:
    """:func:`cancel_on_interrupt` without the exit: True once the job was cancelled (the
    caller may then collect what it had done); a second Ctrl-C exits 130, leaving it running."""
    click.echo(f"\ncancelling {what} (Ctrl-C again to leave it running)", err=True)
    try:
        time.sleep(CANCEL_GRACE)
    except KeyboardInterrupt:
        click.echo(f"left running: {what}", err=True)
        sys.exit(int(Exit.INTERRUPTED))
    try:
        cancelled = cancel()
    except KeyboardInterrupt:
        cancelled = False
    click.echo(
        f"{what} cancelled; what it had done is kept"
        if cancelled
        else f"{what} had ended or was not cancelled",
        err=True,
    )
    return cancelled


def fail(message: str, code: Exit) -> None:
    click.echo(f"lewis: {message}", err=True)
    sys.exit(int(code))


def handle_errors(func: F) -> F:
    """Turn LewisErrors into one readable line and the matching exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(f"configuration error: {exc}", Exit.USAGE)
        except InvalidInput as exc:
            fail(f"invalid input: {exc}", Exit.USAGE)
        except (BrokerUnavailable, TransientError) as exc:
            fail(str(exc), Exit.UNAVAILABLE)
        except LewisError as exc:
            fail(str(exc), Exit.FAILURE)
        except KeyboardInterrupt:
            fail("interrupted", Exit.INTERRUPTED)
        except BrokenPipeError:
            quiet_broken_pipe()
        except (
            click.exceptions.ClickException,
            click.exceptions.Exit,
            click.exceptions.Abort,
            SystemExit,
        ):
            raise  # click's own usage errors and exits already speak for themselves
        except Exception as exc:
            ctx = click.get_current_context(silent=True)
            if ctx is not None and (ctx.find_root().obj or {}).get("traceback"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(
                f"unexpected {type(exc).__name__}: {first} (`lewis --traceback …` shows where)",
                Exit.FAILURE,
            )

    return wrapper  # type: ignore[return-value]


class Seconds(click.FloatRange):
    """A ``--timeout``-like number of seconds: finite and ≥ 0. Click's FLOAT takes '-1', 'nan'
    and 'inf', and a NaN deadline compares false with every clock reading: it never passes."""

    name = "number"

    def __init__(self) -> None:
        super().__init__(min=0.0, max=float(MAX_NUMBER))  # as settings: OS timers overflow past it

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return number


SECONDS = Seconds()


# The module that adds each command: `lewis scan` imports cli/scan.py alone, not every area's
# commands. A name missing here (a command added since) is still found: a miss imports them
# all, as `lewis --help` does (tests/cli/test_interactive_cli.py checks the table).
COMMAND_MODULES = {
    "alerts": "alerts",
    "beat": "workers",
    "bench": "profile",
    "config": "stack",
    "db": "db",
    "diagnose": "profile",
    "down": "stack",
    "drain": "fleet",
    "flower": "workers",
    "health": "fleet",
    "http": "http",
    "loadtest": "http",
    "metrics": "monitor",
    "monitor": "monitor",
    "profile": "profile",
    "scale": "scale",
    "scan": "scan",
    "scans": "scan",
    "size": "scale",
    "status": "stack",
    "up": "stack",
    "vulns": "scan",
    "worker": "workers",
}
OPTIONAL_MODULES = ("scan", "http", "profile")  # an install may leave these out


class LewisGroup(click.Group):
    """A group whose every command gets :func:`handle_errors`, and settings loaded up front;
    each command's module is imported when the command is looked up."""

    def invoke(self, ctx: click.Context) -> Any:
        return handle_errors(super().invoke)(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            _load(COMMAND_MODULES[cmd_name])
        if cmd_name not in self.commands:
            _load_all()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _load_all()
        return super().list_commands(ctx)


@click.group(cls=LewisGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lewis-tasks")
@click.option("--traceback", is_flag=True, help="Show the full traceback of an unexpected error.")
@click.pass_context
def cli(ctx: click.Context, traceback: bool) -> None:
    """LEWIS tasks: distributed scans, HTTP batches, load tests, profiling and benchmarks on
    Celery + Redis. `lewis up` runs the whole stack on this machine."""
    from ..infra.config import get_settings

    ctx.obj = {"traceback": traceback}
    get_settings()  # a bad setting stops every command here, with exit code 2


def _load(module: str) -> None:
    """Import ``cli/<module>.py``, which adds its commands to :data:`cli`."""
    try:
        __import__(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if module not in OPTIONAL_MODULES or exc.name != f"{__name__}.{module}":
            raise


def _load_all() -> None:
    for module in dict.fromkeys(COMMAND_MODULES.values()):
        _load(module)


_load("workers")  # `python -m workers` and the manifests read its commands from `cli` itself


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        try:
            cli.main(
                args=list(argv) if argv is not None else None,
                prog_name="lewis",
                standalone_mode=True,
            )
        except BrokenPipeError:  # click's own output (--help, usage) into a closed pipe
            quiet_broken_pipe()
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
        if code != Exit.BROKEN_PIPE:
            try:
                sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
            except BrokenPipeError:
                quiet_broken_pipe()
        return code
    finally:
        if "lewis_tasks.infra.celery_app" in sys.modules:  # only if this command used Celery
            from ..infra.celery_app import release_result_subscriptions

            release_result_subscriptions()
        if argv is None:  # the process's own command (console script, python -m): it ends now
            _skip_teardown_collection()
    return 0


def _skip_teardown_collection() -> None:
    """Leave the objects alive now out of the interpreter's last garbage collections: at exit
    they walked the Celery, kombu and SQLAlchemy object graphs for 0.2–0.9 s per command on
    this machine (bench/interactive.py), after the work was done. Finalizers, atexit handlers
    and flushes all still run; only the cycle search over what the process is dropping anyway
    is skipped."""
    import gc

    gc.disable()
    gc.freeze()
