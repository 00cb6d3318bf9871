"""nmap-compatible outputs of a scan report (-oX checked against nmap's own DTD, -oG), and
output into a closed pipe. The end-to-end runs against a stack are in test_scan_cli.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.producer.scanoutput import to_grepable, to_nmap_xml
from tests.support.procs import ROOT, lewis_env

NMAP_DTD = Path("/usr/share/nmap/nmap.dtd")  # Debian's nmap package ships it


def dtd_check(xml: str, tmp_path: Path) -> None:
    """xmllint --dtdvalid against nmap's DTD; skipped (saying why) only if either is absent."""
    if shutil.which("xmllint") is None:
        pytest.skip("xmllint not installed (Debian: apt-get install libxml2-utils)")
    if not NMAP_DTD.exists():
        pytest.skip(f"{NMAP_DTD} absent (Debian: apt-get install nmap)")
    path = tmp_path / "scan.xml"
    path.write_text(xml)
    checked = subprocess.run(
        ["xmllint", "--noout", "--dtdvalid", str(NMAP_DTD), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


REPORT: dict[str, Any] = {
    "scan_id": "4f" * 16,
    "status": "done",
    "request": {"ports": "22,5672,6379"},
    "created_at": "2026-12-04T18:00:00+00:00",
    "finished_at": "2026-12-04T18:00:03.5+00:00",
    "error": None,
    "hosts": [
        {
            "address": "127.0.0.1",
            "hostname": "localhost",
            "filtered": 0,
            "closed": 1,
            "open_ports": [
                {
                    "port": 22,
                    "service": "ssh",
                    "product": "OpenSSH",
                    "version": "9.2p1",
                    "banner": "SSH-2.0-OpenSSH_9.2p1",
                },
                {"port": 5672, "service": "amqp?", "product": None, "version": None},
            ],
        },
        {"address": "::1", "hostname": None, "filtered": 3, "closed": 0, "open_ports": []},
    ],
    "findings": [
        {
            "host": "127.0.0.1",
            "port": 22,
            "severity": "critical",
            "title": "ssh <OpenSSH> & co",
            "cve_ids": ["CVE-2023-38408"],
            "revision": "Debian-2+deb12u10",
            "conditional_cve_ids": ["CVE-2099-0001"],
        }
    ],
}


def test_xml_is_valid_against_nmaps_dtd_and_says_what_nmap_readers_look_for(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    xml = to_nmap_xml(REPORT, ["127.0.0.1", "::1", "-p", "22,5672,6379"])
    dtd_check(xml, tmp_path)
    root = ET.fromstring(xml.split("\n", 2)[2])
    assert root.get("scanner") == "nmap" and root.get("args", "").startswith("lewis scan")
    hosts = root.findall("host")
    assert [h.find("address").get("addrtype") for h in hosts] == ["ipv4", "ipv6"]  # type: ignore[union-attr]
    ssh = hosts[0].find("ports/port[@portid='22']/service")
    assert ssh is not None and (
        ssh.get("name"),
        ssh.get("product"),
        ssh.get("version"),
        ssh.get("method"),
        ssh.get("extrainfo"),
    ) == ("ssh", "OpenSSH", "9.2p1", "probed", "Debian-2+deb12u10")
    assert ssh.findtext("cpe") == "cpe:/a:openbsd:openssh:9.2p1"
    guess = hosts[0].find("ports/port[@portid='5672']/service")
    assert guess is not None and (guess.get("name"), guess.get("method"), guess.get("conf")) == (
        "amqp",
        "table",
        "3",
    )  # a name from the port number: nmap's own mark of a guess
    script = hosts[0].find("ports/port[@portid='22']/script")
    assert script is not None and "CVE-2023-38408" in script.get("output", "")
    assert "version only" in script.get("output", "")
    extra = hosts[1].find("ports/extraports")
    assert extra is not None and (extra.get("state"), extra.get("count")) == ("filtered", "3")
    assert root.find("runstats/hosts").get("total") == "2"  # type: ignore[union-attr]


def test_xml_of_a_failed_scan_with_no_hosts_is_valid_too(tmp_path: Path) -> None:
    failed = {
        **REPORT,
        "status": "failed",
        "error": "broker went away",
        "hosts": [],
        "findings": [],
        "finished_at": None,
    }
    xml = to_nmap_xml(failed)
    dtd_check(xml, tmp_path)
    assert 'exit="error"' in xml and 'errormsg="broker went away"' in xml


def test_grepable_lines_are_nmaps() -> None:
    lines = to_grepable(REPORT, ["127.0.0.1"]).splitlines()
    assert lines[0].startswith("# LEWIS ") and lines[0].endswith("as: lewis scan 127.0.0.1")
    assert lines[1] == "Host: 127.0.0.1 (localhost)\tStatus: Up"
    assert lines[2] == (
        "Host: 127.0.0.1 (localhost)\tPorts: 22/open/tcp//ssh//OpenSSH 9.2p1 "
        "Debian-2+deb12u10/, "
        "5672/open/tcp//amqp?///\tIgnored State: closed (1)"
    )
    assert lines[4] == "Host: ::1 ()\tIgnored State: filtered (3)"
    assert lines[-1].startswith("# LEWIS done at ") and "2 IP addresses (2 hosts up)" in lines[-1]
    assert lines[-1].endswith("scanned in 3.00 seconds")


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as `| head` after its line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lewis_tasks.cli", "config"],
            cwd=ROOT,
            env=lewis_env({"LEWIS_STACK_HOME": str(tmp_path)}),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 141


def test_ndiff_reads_two_lewis_scans(tmp_path: Path) -> None:
    """ndiff (nmap's scan comparer) takes the XML: a port closed between scans shows."""
    if shutil.which("ndiff") is None:
        pytest.skip("ndiff not installed (Debian: apt-get install ndiff)")
    before, after = tmp_path / "before.xml", tmp_path / "after.xml"
    before.write_text(to_nmap_xml(REPORT))
    host = dict(REPORT["hosts"][0], open_ports=REPORT["hosts"][0]["open_ports"][:1])
    after.write_text(to_nmap_xml({**REPORT, "hosts": [host, REPORT["hosts"][1]]}))
    diff = subprocess.run(
        ["ndiff", str(before), str(after)], capture_output=True, text=True, timeout=60
    )
    assert diff.returncode == 1, diff.stderr  # 1: the scans differ
    assert "-5672/tcp open  amqp" in diff.stdout and "22/tcp" not in diff.stdout


def test_a_scan_with_a_chunk_cut_by_its_deadline_says_it_is_partial(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lewis_tasks.cli.scan import _print_report
    from lewis_tasks.domain.scanreport import ChunkResult, ScanProgress, ScanReport, build_report

    chunks = [ChunkResult.from_dict({"address": "10.0.0.9", "closed": 5, "timed_out": True})]
    summary = build_report(chunks, [], []).summary
    progress = ScanProgress("s1", "done", 1, 1, 100, 5, 0)
    _print_report(ScanReport("s1", "done", {}, None, None, progress, summary=summary), False)
    out = capsys.readouterr().out
    assert "partial: 1 chunk(s) stopped at their deadline, ports unscanned" in out, out


def test_a_severity_floor_above_every_finding_says_what_it_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lewis_tasks.cli.scan import _print_report
    from lewis_tasks.domain.scanreport import ScanProgress, ScanReport

    # Given a scan whose findings are all below the floor asked for (`--min-severity medium`)
    findings = tuple(
        {"severity": level, "host": "127.0.0.1", "port": port, "service": "x", "cves": []}
        for level, port in (("low", 3306), ("info", 4222))
    )
    progress = ScanProgress("s1", "done", 1, 1, 1000, 1000, 2)
    report = ScanReport("s1", "done", {}, None, None, progress, findings=findings)
    # When the table is printed, then it has no rows (and no header) and says what it left out
    _print_report(report, False, min_severity="medium")
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith(("SEVERITY", "low", "info")) for line in lines), lines
    assert lines[-1] == "(2 more findings not shown: --min-severity medium)", lines
