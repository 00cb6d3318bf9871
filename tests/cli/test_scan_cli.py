"""`lewis scan`, `lewis scans`, `lewis vulns import`: exit codes, one-line errors, the JSON shape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lewis_tasks.cli import cli
from lewis_tasks.domain.vulns import find_cves, sample_records
from lewis_tasks.infra import config
from lewis_tasks.infra.database import get_engine
from lewis_tasks.infra.vulnlookup import invalidate_vulnerability_cache
from lewis_tasks.producer.scan import scan_handle
from lewis_tasks.storage import vulns
from lewis_tasks.storage.db import session_scope
from tests.conftest import stack_env
from tests.support.listeners import CATALOGUE, ListenerSet, running_listeners
from tests.support.procs import ROOT, lewis_env

ADDRESS = "127.88.3.1"
SSH, REDIS = CATALOGUE[0], CATALOGUE[4]  # OpenSSH 8.9p1; Redis answering PING without AUTH


def lewis(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lewis_tasks.cli", *args],
        cwd=ROOT,
        env=lewis_env(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- without a stack


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["scan", "300.1.2.3"], "'300.1.2.3'"),
        (["scan", "127.0.0.1", "-p", "22,x"], "'x'"),
        (["scan", "127.0.0.1", "-p", "70000"], "'70000'"),
        (["scan", "127.0.0.1", "10.0.0.1"], "10.0.0.1 is out of scope"),
        (["scan", "127.0.0.1", "--rate", "0"], "rate 0.0"),
    ],
)
def test_bad_input_exits_2_naming_the_bad_token(
    tmp_path: Path, args: list[str], named: str
) -> None:
    result = lewis(*args, env={"LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lewis: invalid input:") and named in lines[0]


def test_scan_without_a_stack_says_how_to_get_one(tmp_path: Path) -> None:
    result = lewis("scan", "127.0.0.1", "-p", "22", env={"LEWIS_STACK_HOME": str(tmp_path)})
    assert result.returncode == 1 and "lewis up" in result.stderr
    assert "Traceback" not in result.stderr


def test_vulns_import_counts_and_a_second_import_changes_nothing(tmp_path: Path) -> None:
    env = {"LEWIS_STACK_HOME": str(tmp_path)}
    feed = tmp_path / "feed.json"
    feed.write_bytes((Path(ROOT) / "lewis_tasks/domain/data/nvd-sample.json").read_bytes())
    first = lewis("vulns", "import", str(feed), env=env)
    assert first.returncode == 0, first.stderr
    assert f"{len(sample_records())} CVEs, {len(sample_records())} written" in first.stdout
    again = lewis("vulns", "import", str(feed), "--sample", env=env)
    assert again.returncode == 0
    assert again.stdout.count("0 written, 0 ranges added, 0 removed") == 2


def test_vulns_import_of_a_bad_file_exits_2_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    env = {"LEWIS_STACK_HOME": str(tmp_path)}
    bad = tmp_path / "broken.json"
    bad.write_text('{"vulnerabilities": [{"nope": 1}]}')
    result = lewis("vulns", "import", str(bad), "--sample", env=env)
    assert result.returncode == 2 and "broken.json" in result.stderr
    assert not (tmp_path / "lewis.db").exists()  # parsed everything before touching the database
    assert lewis("vulns", "import", env=env).returncode == 2  # nothing named


# ---------------------------------------------------------------- against the embedded worker


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    with running_listeners(
        3, host=ADDRESS, seed=9, banner_share=2 / 3, services=(SSH, REDIS)
    ) as running:
        yield running


@pytest.fixture
def stack(lewis_settings: Any, celery_worker: Any) -> Iterator[None]:
    with session_scope(get_engine()) as session:
        vulns.import_vulnerabilities(session, sample_records())
    invalidate_vulnerability_cache()
    previous = config.get_settings()
    config.set_settings(config.replace_section(previous, "scan", banner_timeout=1.0))
    try:
        yield
    finally:
        config.set_settings(previous)


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def port_of(listeners: ListenerSet, service: Any) -> int:
    return next(p for p, item in listeners.listeners.items() if item.service is service)


def test_scan_json_has_hosts_ports_services_and_findings(
    listeners: ListenerSet, stack: None
) -> None:
    result = run("scan", ADDRESS, "-p", ",".join(map(str, listeners.ports)), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "done" and len(data["scan_id"]) == 32
    (host,) = data["hosts"]
    assert host["address"] == ADDRESS
    by_port = {p["port"]: p for p in host["open_ports"]}
    assert sorted(by_port) == listeners.ports
    ssh = by_port[port_of(listeners, SSH)]
    assert (ssh["service"], ssh["product"], ssh["version"]) == ("ssh", "OpenSSH", "8.9p1")
    assert by_port[port_of(listeners, REDIS)]["service"] == "redis"
    findings = {f["port"]: f for f in data["findings"]}
    assert set(findings) == set(listeners.ports)
    assert data["findings"][0]["severity"] == "critical"
    assert findings[port_of(listeners, REDIS)]["severity"] == "critical"
    assert findings[port_of(listeners, SSH)]["cve_ids"] == [
        r.cve_id for r in find_cves("OpenSSH", "8.9p1", sample_records())
    ]
    assert findings[port_of(listeners, SSH)]["revision"] == "Ubuntu-3ubuntu0.6"  # from the banner
    assert {"severity", "host", "port", "service", "product", "version", "cve_ids"} <= set(
        data["findings"][0]
    )
    # and `lewis scans show ID --json` gives the same report
    shown = run("scans", "show", data["scan_id"], "--json")
    assert shown.exit_code == 0 and json.loads(shown.output) == data


def test_scan_table_and_scans_list(listeners: ListenerSet, stack: None) -> None:
    result = run("scan", ADDRESS, "-p", f"{port_of(listeners, REDIS)},{port_of(listeners, SSH)}")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("scan ") and "2 open" in lines[0]
    assert lines[1].split() == ["SEVERITY", "HOST:PORT", "SERVICE", "CVE"]
    ssh_row = next(line for line in lines if f":{port_of(listeners, SSH)} " in line)
    # CVEs matched on the banner's version are marked so, beside the distribution revision
    assert ssh_row.endswith("[version only; Ubuntu-3ubuntu0.6]") and "CVE-2023-38408" in ssh_row
    assert "critical" in ssh_row.split()[0]
    redis_row = next(line for line in lines if f":{port_of(listeners, REDIS)} " in line)
    assert redis_row.startswith("critical")
    scan_id = lines[0].split()[1].rstrip(":")
    listed = json.loads(run("scans", "list", "--json", "--limit", "5").output)
    assert any(item["scan_id"] == scan_id and item["status"] == "done" for item in listed)


def test_no_wait_prints_the_id_and_the_scan_goes_on(listeners: ListenerSet, stack: None) -> None:
    result = run(
        "scan", ADDRESS, "-p", str(listeners.ports[0]), "--no-wait", "--json", "--no-services"
    )
    assert result.exit_code == 0
    scan_id = json.loads(result.output)["scan_id"]
    report = scan_handle(scan_id).wait(timeout=60)
    assert report.open_ports() == {ADDRESS: [listeners.ports[0]]}


def test_show_of_an_unknown_scan_exits_2(lewis_settings: Any) -> None:
    result = CliRunner().invoke(cli, ["scans", "show", "no-such-scan"])
    assert result.exit_code == 2 and "no such scan" in result.output


def test_scan_outputs_targets_file_exclude_and_fail_on(
    listeners: ListenerSet, stack: None, tmp_path: Path
) -> None:
    from tests.cli.test_scan_outputs import dtd_check

    targets = tmp_path / "targets.txt"
    targets.write_text(f"# from an inventory\n{ADDRESS}  127.88.3.9\n127.88.3.10, 127.88.3.11\n")
    ports = ",".join(map(str, listeners.ports))
    xml, grep = tmp_path / "scan.xml", tmp_path / "scan.gnmap"
    result = run(
        "scan",
        "-iL",
        str(targets),
        "--exclude",
        "127.88.3.9,127.88.3.10/32",
        "--exclude",
        "127.88.3.11",
        "-p",
        ports,
        "-oX",
        str(xml),
        "-oG",
        str(grep),
        "--fail-on",
        "high",
        "--min-severity",
        "critical",
        "--limit",
        "1",
    )
    assert result.exit_code == 4, result.output  # Redis without AUTH is critical
    lines = result.output.splitlines()
    assert "1 hosts" in lines[0]  # the three others were excluded
    assert len([line for line in lines if line.startswith("critical")]) == 1  # --limit 1
    assert not any(line.startswith(("info", "low", "medium")) for line in lines)
    assert "not shown: --min-severity critical, --limit 1" in lines[-1]
    text = xml.read_text()
    dtd_check(text, tmp_path)
    for port in listeners.ports:
        assert f'portid="{port}"' in text
    assert f'<address addr="{ADDRESS}" addrtype="ipv4" />' in text
    assert 'product="OpenSSH" version="8.9p1" extrainfo="Ubuntu-3ubuntu0.6"' in text
    grepable = grep.read_text().splitlines()
    ports_line = next(line for line in grepable if "\tPorts: " in line)
    assert ports_line.startswith(f"Host: {ADDRESS} ()")
    assert (
        f"{port_of(listeners, SSH)}/open/tcp//ssh//OpenSSH 8.9p1 Ubuntu-3ubuntu0.6/" in ports_line
    )
    # "-oX -": the XML on stdout instead of the table
    piped = run("scan", ADDRESS, "-p", str(port_of(listeners, SSH)), "-oX", "-")
    assert piped.exit_code == 0 and piped.output.startswith("<?xml")
    dtd_check(piped.output, tmp_path)
    # below the --fail-on level: exit 0
    quiet = run(
        "scan",
        ADDRESS,
        "-p",
        str(port_of(listeners, REDIS)),
        "--fail-on",
        "critical",
        "--exclude",
        "127.88.3.9",
    )
    assert quiet.exit_code == 4
    calm = run(
        "scan", ADDRESS, "-p", str(listeners.ports[0]), "--no-services", "--fail-on", "critical"
    )
    assert calm.exit_code == 0, calm.output


def test_every_target_excluded_and_no_targets_are_refused(stack: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["scan", ADDRESS, "--exclude", "127.88.0.0/16"])
    assert result.exit_code == 2 and "every target is excluded" in result.output
    # nmap's --excludefile: the same, from a file read as -iL reads targets
    excluded = tmp_path / "exclude.txt"
    excluded.write_text("# lab hosts\n127.88.0.0/16, 127.99.0.1\n")
    result = CliRunner().invoke(cli, ["scan", ADDRESS, "--excludefile", str(excluded)])
    assert result.exit_code == 2 and "every target is excluded" in result.output
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n")
    result = CliRunner().invoke(cli, ["scan", "-iL", str(empty)])
    assert result.exit_code == 2 and "no targets" in result.output


def test_scans_show_takes_a_unique_prefix_and_list_has_a_header(
    listeners: ListenerSet, stack: None
) -> None:
    data = json.loads(
        run("scan", ADDRESS, "-p", str(listeners.ports[0]), "--json", "--no-services").output
    )
    scan_id = data["scan_id"]
    shown = run("scans", "show", scan_id[:10], "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["scan_id"] == scan_id
    assert CliRunner().invoke(cli, ["scans", "show", "0" * 31 + "g"]).exit_code == 2
    listed = run("scans", "list").output.splitlines()
    assert listed[0].split()[:4] == ["SCAN", "ID", "STATUS", "CREATED"]
    ids = [line.split()[0] for line in listed[1:]]
    assert scan_id in ids
    shared = next((a[0] for a in ids for b in ids if a != b and a[0] == b[0]), None)
    if shared is not None:  # two scans share a first character: that prefix is ambiguous
        ambiguous = CliRunner().invoke(cli, ["scans", "show", shared])
        assert ambiguous.exit_code == 2 and "ambiguous" in ambiguous.output


def on_terminal(args: list[str], env: dict[str, str]) -> str:
    """What ``lewis ARGS`` writes to a terminal (a pty); it must exit 0."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lewis_tasks.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_a_scan_followed_on_a_terminal_names_itself_first(
    listeners: ListenerSet, stack: None, redis_url: str, tmp_path: Path
) -> None:
    # the environment of the test stack (its broker and database) for a `lewis` process
    database = config.get_settings().database.url
    env = lewis_env(stack_env(redis_url, tmp_path, LEWIS_DATABASE_URL=database))
    # When a scan runs in the foreground of a terminal
    shown = on_terminal(["scan", ADDRESS, "-p", str(port_of(listeners, REDIS))], env)
    # Then its first line names it, with the id `lewis scans cancel` takes from another shell,
    # the same id its report ends with
    first = shown.lstrip().splitlines()[0]
    match = re.match(r"scan ([0-9a-f]{32}) \(Ctrl-C cancels it\)", first)
    assert match is not None, shown
    assert f"scan {match.group(1)}: done" in shown


def test_the_table_is_coloured_on_a_terminal_only(
    listeners: ListenerSet, stack: None, tmp_path: Path
) -> None:
    scan_id = json.loads(
        run("scan", ADDRESS, "-p", str(port_of(listeners, REDIS)), "--json").output
    )["scan_id"]
    env = lewis_env(
        {
            "LEWIS_DATABASE_URL": config.get_settings().database.url,
            "LEWIS_STACK_HOME": str(tmp_path),
        }
    )
    env.pop("NO_COLOR", None)

    def show(extra_env: dict[str, str], tty: bool) -> str:
        if not tty:
            return subprocess.run(
                [sys.executable, "-m", "lewis_tasks.cli", "scans", "show", scan_id],
                cwd=ROOT,
                env={**env, **extra_env},
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
        return on_terminal(["scans", "show", scan_id], {**env, **extra_env})

    assert "\x1b[" in show({}, tty=True) and "critical" in show({}, tty=True)
    assert "\x1b[" not in show({"NO_COLOR": "1"}, tty=True)
    assert "\x1b[" not in show({}, tty=False)
