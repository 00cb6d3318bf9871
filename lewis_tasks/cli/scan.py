"""``lewis scan``, ``lewis scans list|show``, ``lewis vulns import``.

``lewis scan`` submits, then (unless ``--no-wait``) shows a live progress bar when stdout is a
terminal and ends with a findings table — or, with ``--json``, the scan id, per host the open
ports with service/product/version, and the findings with severity and CVE ids. Bad targets
and port specs exit 2 naming the bad token (nothing is enqueued). Ctrl-C stops waiting, not
the scan: its id is printed so ``lewis scans show`` can pick it up.

The options nmap users reach for: ``-iL FILE`` (targets from a file, ``-`` for stdin),
``--exclude``, ``--excludefile FILE``, ``-oX FILE`` / ``-oG FILE`` (nmap XML and grepable, ``-`` for stdout), and for
CI ``--fail-on SEVERITY`` (exit 4 if a finding is at least that severe). The table takes
``--min-severity`` and ``--limit``; it is coloured on a terminal, never when piped or with
``NO_COLOR`` set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from . import SECONDS, Exit, cli
from .follow import follow

_LEVELS = ("info", "low", "medium", "high", "critical")

_SEVERITY_STYLE = {
    "critical": "red",
    "high": "red",
    "medium": "yellow",
    "low": "cyan",
    "info": None,
}


@cli.command()
@click.argument("targets", nargs=-1)
@click.option(
    "-p",
    "--ports",
    "ports",
    default="top1000",
    show_default=True,
    help="Port spec: 22,80,443 · 1-1024 · - (all) · top100 / topN.",
)
@click.option(
    "--rate",
    type=float,
    default=None,
    help="Connections per second per host, across all workers (nmap --max-rate).",
)
@click.option(
    "--no-services", is_flag=True, help="Skip service identification (like nmap without -sV)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-wait", is_flag=True, help="Submit, print the scan id, return at once.")
@click.option(
    "--timeout", type=SECONDS, default=None, help="Give up waiting after this many seconds."
)
@click.option(
    "--wait-for-workers",
    is_flag=True,
    help="Submit even when no io worker is online; the scan waits in the queue.",
)
@click.option(
    "-iL",
    "input_list",
    type=click.File("r"),
    default=None,
    help="Read targets from FILE (one or more per line, # comments; - for stdin).",
)
@click.option(
    "--exclude",
    "exclude",
    multiple=True,
    help="Leave out these addresses, CIDR blocks or hostnames (comma-separated).",
)
@click.option(
    "--excludefile",
    "exclude_file",
    type=click.File("r"),
    default=None,
    help="Leave out the targets listed in FILE (as -iL reads them).",
)
@click.option(
    "-oX",
    "xml_out",
    type=click.File("w"),
    default=None,
    help="Also write the report as nmap XML to FILE (- for stdout).",
)
@click.option(
    "-oG",
    "grep_out",
    type=click.File("w"),
    default=None,
    help="Also write the report in nmap's grepable format to FILE (- for stdout).",
)
@click.option(
    "--min-severity",
    type=click.Choice(_LEVELS),
    default="info",
    show_default=True,
    help="Only show findings at least this severe in the table.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Show at most this many findings in the table (most severe first).",
)
@click.option(
    "--fail-on",
    type=click.Choice(_LEVELS),
    default=None,
    help="Exit 4 if any finding is at least this severe (for CI).",
)
@click.pass_context
def scan(
    ctx: click.Context,
    targets: tuple[str, ...],
    ports: str,
    rate: float | None,
    no_services: bool,
    as_json: bool,
    no_wait: bool,
    timeout: float | None,
    wait_for_workers: bool,
    input_list: Any,
    exclude: tuple[str, ...],
    exclude_file: Any,
    xml_out: Any,
    grep_out: Any,
    min_severity: str,
    limit: int | None,
    fail_on: str | None,
) -> None:
    """Scan TARGET… (addresses, CIDR blocks, hostnames) inside the configured scope."""
    from ..errors import InvalidInput
    from ..producer.scan import submit_scan
    from .fleet import require_workers

    wanted = list(targets) + (_read_targets(input_list) if input_list is not None else [])
    if not wanted:
        raise InvalidInput("no targets: give TARGET… or -iL FILE")
    handle = submit_scan(
        wanted,
        ports=ports,
        rate=rate,
        services=not no_services,
        exclude=[*exclude, *(_read_targets(exclude_file) if exclude_file else [])],
        before_send=lambda: require_workers("io", wait=wait_for_workers),
    )
    if no_wait:
        click.echo(json.dumps({"scan_id": handle.id}) if as_json else handle.id)
        return
    live = sys.stdout.isatty() and not as_json
    try:  # as nmap: Ctrl-C stops the scan (twice: leaves it running)
        report = follow(handle, timeout, _bar() if live else None, keep_line=True)
    except TimeoutError as exc:
        click.echo(f"lewis: {exc}; `lewis scans show {handle.id}` later", err=True)
        sys.exit(int(Exit.FAILURE))
    args = _command_args(ctx)
    _write_outputs(report, args, xml_out, grep_out)
    to_stdout = bool(
        {"-", "<stdout>"} & {getattr(xml_out, "name", None), getattr(grep_out, "name", None)}
    )
    if not to_stdout:
        _print_report(report, as_json, min_severity=min_severity, limit=limit)
    if fail_on is not None and _worst_level(report.findings) >= _LEVELS.index(fail_on):
        sys.exit(int(Exit.FINDINGS))


def _read_targets(stream: Any) -> list[str]:
    """nmap -iL: targets separated by blanks, commas or newlines; ``#`` starts a comment."""
    out: list[str] = []
    for line in stream:
        out.extend(t for t in line.split("#", 1)[0].replace(",", " ").split() if t)
    return out


def _command_args(ctx: click.Context) -> list[str]:
    """The arguments as given (for the outputs' "as:" line), from the process's argv."""
    argv = list(sys.argv[1:])
    return argv[1:] if argv and argv[0] == ctx.info_name else argv


def _write_outputs(report: Any, args: Sequence[str], xml_out: Any, grep_out: Any) -> None:
    if xml_out is None and grep_out is None:
        return
    from ..producer.scanoutput import to_grepable, to_nmap_xml

    data = report.to_dict()
    if xml_out is not None:
        xml_out.write(to_nmap_xml(data, args))
        xml_out.flush()
    if grep_out is not None:
        grep_out.write(to_grepable(data, args))
        grep_out.flush()


def _worst_level(findings: Sequence[dict[str, Any]]) -> int:
    return max(
        (_LEVELS.index(f["severity"]) for f in findings if f.get("severity") in _LEVELS), default=-1
    )


def _colour() -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _bar() -> Callable[[Any], str]:
    """The live progress bar of a scan, drawn from its ScanProgress."""
    width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 60))

    def draw(p: Any) -> str:
        filled = int(p.fraction * width)
        doing = "  identifying services…" if p.phase == "identifying" else ""
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {p.fraction * 100:5.1f}%  "
            f"chunks {p.chunks_done}/{p.chunks_total}  ports {p.ports_done:,}/"
            f"{p.ports_total:,}  open {p.open_count}{doing}"
        )

    return draw


def _print_report(
    report: Any, as_json: bool, *, min_severity: str = "info", limit: int | None = None
) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    s = report.summary
    click.echo(
        f"scan {report.scan_id}: {report.status} — {s.get('hosts', 0)} hosts, "
        f"{s.get('open', 0)} open, {s.get('filtered', 0)} filtered, "
        f"{s.get('closed', 0)} closed"
    )
    if report.error:
        click.echo(f"error: {report.error}")
    if s.get("timed_out"):
        click.echo(f"partial: {s['timed_out']} chunk(s) stopped at their deadline, ports unscanned")
    if not report.findings:
        click.echo("no open ports, no findings")
        return
    floor = _LEVELS.index(min_severity)
    shown = (
        [f for f in report.findings if _LEVELS.index(f["severity"]) >= floor]
        if floor
        else list(report.findings)
    )
    hidden = len(report.findings) - len(shown)
    if limit is not None and len(shown) > limit:
        hidden, shown = hidden + len(shown) - limit, shown[:limit]
    rows = [
        (f["severity"], f"{_host(f['host'])}:{f['port']}", _service(f), _cve_cell(f)) for f in shown
    ]
    if rows:  # none at --min-severity or above: no table, only what was left out
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEADERS)]
        colour = _colour()
        click.echo("  ".join(h.ljust(w) for h, w in zip(_HEADERS, widths, strict=True)).rstrip())
        for row in rows:
            cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
            severity = row[0]
            cells[0] = click.style(
                cells[0], fg=_SEVERITY_STYLE.get(severity), bold=severity == "critical"
            )
            click.echo("  ".join(cells).rstrip(), color=colour)
    if hidden:
        click.echo(
            f"({hidden} more finding{'s' * (hidden > 1)} not shown: --min-severity "
            f"{min_severity}{f', --limit {limit}' if limit else ''})"
        )


_HEADERS = ("SEVERITY", "HOST:PORT", "SERVICE", "CVE")


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _service(f: dict[str, Any]) -> str:
    what = " ".join(p for p in (f.get("product"), f.get("version")) if p)
    return f"{f.get('service') or 'unknown'}" + (f" ({what})" if what else "")


def _cve_cell(f: dict[str, Any]) -> str:
    """The CVEs matched on the version (marked so, with the banner's distribution revision, whose
    backports the version does not show), then how many apply only on an unseen platform."""
    ids, cell = list(f.get("cve_ids") or []), ""
    if ids:
        basis = "; ".join(p for p in ("version only", f.get("revision")) if p)
        cell = f"{_cves(ids)} [{basis}]"
    conditional = list(f.get("conditional_cve_ids") or [])
    if conditional:
        cell += (
            f"{' ' if cell else ''}(+{len(conditional)} conditional on the OS: "
            f"{_cves(conditional, 2)})"
        )
    return cell


def _cves(ids: list[str], shown: int = 3) -> str:
    if len(ids) <= shown:
        return ", ".join(ids)
    return ", ".join(ids[:shown]) + f" +{len(ids) - shown}"


# ---------------------------------------------------------------- lewis scans


@cli.group()
def scans() -> None:
    """Past and running scans."""


@scans.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--status", default=None, help="Only scans in this status (running, done, failed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_scans(limit: int, status: str | None, as_json: bool) -> None:
    """The newest scans: id, status, progress, open ports, worst finding."""
    from ..infra.database import get_engine
    from ..storage import scans as repo
    from ..storage.db import session_scope

    with session_scope(get_engine()) as session:
        rows = repo.list_scans(session, status=status, limit=limit)
    items: list[dict[str, Any]] = [
        {
            "scan_id": r.id,
            "status": r.status,
            "created_at": r.created_at.isoformat(),
            "targets": (r.request or {}).get("targets"),
            "ports": (r.request or {}).get("ports"),
            "chunks": f"{r.chunks_done}/{r.chunks_total}",
            "open": r.open_count,
            "worst": (r.summary or {}).get("worst"),
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no scans yet")
        return
    click.echo(
        f"{'SCAN ID':<32}  {'STATUS':<8}  {'CREATED (UTC)':<19}  {'CHUNKS':<9}  "
        f"{'OPEN':>5}  {'WORST':<8}  TARGETS"
    )
    for i in items:
        targets = " ".join(i["targets"] or [])
        click.echo(
            f"{i['scan_id']:<32}  {i['status']:<8}  {i['created_at'][:19]:<19}  "
            f"{i['chunks']:<9}  {i['open']:>5}  {i['worst'] or '-':<8}  "
            f"{targets} -p {i['ports']}"
        )


@scans.command("show")
@click.argument("scan_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_scan(scan_id: str, as_json: bool) -> None:
    """One scan's report (as far as it has come, if it still runs); a unique prefix of its id
    will do."""
    from ..errors import InvalidInput
    from ..producer.scan import is_queued
    from ..producer.scanreport import load_scan_report, resolve_scan_id

    try:
        report = load_scan_report(resolve_scan_id(scan_id))
    except InvalidInput:
        if not is_queued(scan_id):
            raise
        report = None
    if report is None:
        if not is_queued(scan_id):
            raise InvalidInput(f"scan {scan_id!r}: no such scan (`lewis scans list` shows them)")
        click.echo(
            json.dumps({"scan_id": scan_id, "status": "queued"})
            if as_json
            else f"scan {scan_id}: queued, no worker has taken it yet"
        )
        return
    _print_report(report, as_json)


@scans.command("cancel")
@click.argument("scan_id")
def cancel_scan_command(scan_id: str) -> None:
    """Stop a running scan: queued chunks are dropped, running ones stop within a fraction of
    a second and keep what they found; the scan ends ``cancelled``. A unique id prefix will do."""
    from ..producer.scan import cancel_scan
    from ..producer.scanreport import read_progress, resolve_scan_id

    full = resolve_scan_id(scan_id)
    if cancel_scan(full):
        click.echo(f"scan {full} cancelled")
        return
    status = read_progress(full).status
    if status == "cancelled":
        click.echo(f"scan {full} was cancelled already")
        return
    click.echo(f"lewis: scan {full} has ended ({status}): nothing to cancel", err=True)
    sys.exit(int(Exit.FAILURE))


# ---------------------------------------------------------------- lewis vulns


@cli.group()
def vulns() -> None:
    """Vulnerability data (NVD CVE JSON 2.0 feeds)."""


@vulns.command("import")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--sample", is_flag=True, help="Also import the sample feed shipped with LEWIS.")
def import_feeds(files: tuple[Path, ...], sample: bool) -> None:
    """Load NVD CVE JSON 2.0 feed FILEs; importing the same data again changes nothing."""
    from ..domain.vulns import load_feed, sample_records
    from ..errors import InvalidInput
    from ..infra.cache import VULN_KEYS, get_cache
    from ..infra.config import get_settings
    from ..infra.database import get_engine
    from ..storage import vulns as repo
    from ..storage.db import session_scope
    from .db import upgrade_database as upgrade

    if not files and not sample:
        raise InvalidInput("nothing to import: give feed FILEs, or --sample")
    feeds = [(str(f), load_feed(f)) for f in files]  # every file parsed before any write
    if sample:
        feeds.append(("sample feed", list(sample_records())))
    upgrade(get_settings().database.url)
    changed = False
    for name, records in feeds:
        with session_scope(get_engine()) as session:
            done = repo.import_vulnerabilities(session, records)
        changed = changed or bool(done.cves_written or done.ranges_added or done.ranges_removed)
        click.echo(
            f"{name}: {done.cves_seen} CVEs, {done.cves_written} written, "
            f"{done.ranges_added} ranges added, {done.ranges_removed} removed"
        )
    if changed:
        get_cache().invalidate(VULN_KEYS)  # the CVE lookups the scan tasks cached
