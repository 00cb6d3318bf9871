"""A scan report in the formats nmap users feed to their other tools: XML (``-oX``) and
grepable (``-oG``).

The XML follows nmap's DTD (``nmap.dtd``, shipped with nmap), so ``ndiff``, Metasploit's
``db_import`` and other nmap readers take it: ``<nmaprun scanner="nmap">`` — the DTD allows no
other scanner name, so ``args`` says it was ``lewis scan`` and ``version`` is LEWIS's — a
``<host>`` per address with its closed/filtered ports as ``<extraports>``, a ``<port>`` per
open port with its ``<service>`` (``method="probed"`` when an answer named it,
``method="table" conf="3"`` when only the port number did, as nmap marks a guess) and the
CPE of an identified product, and the port's finding (severity, CVEs) as a ``<script>``.
The grepable form is nmap's ``Host: … Ports: port/state/proto/owner/service/rpc/version/``.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from ..domain.vulns import cpe_products

XML_OUTPUT_VERSION = "1.05"
_GUESS_CONF = "3"  # nmap's confidence for a name from the services table
_PROBED_CONF = "10"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lewis-{version('lewis-tasks')}"
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without metadata
        return "lewis"


def _epoch(iso: str | None) -> int:
    if not iso:
        return int(dt.datetime.now(dt.UTC).timestamp())
    stamp = dt.datetime.fromisoformat(iso)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp())


def _timestr(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%a %b %d %H:%M:%S %Y")


def _ports_scanned(report: Mapping[str, Any]) -> str:
    request = report.get("request") or {}
    return str(request.get("ports") or "")


def _service_attrs(port: Mapping[str, Any]) -> dict[str, str]:
    name = str(port.get("service") or "unknown")
    guessed = name.endswith("?") or name == "unknown"
    attrs = {
        "name": name.rstrip("?") or "unknown",
        "method": "table" if guessed else "probed",
        "conf": _GUESS_CONF if guessed else _PROBED_CONF,
    }
    for key in ("product", "version"):
        if port.get(key):
            attrs[key] = str(port[key])
    if port.get("revision"):
        attrs["extrainfo"] = str(port["revision"])
    return attrs


def _cpe(port: Mapping[str, Any]) -> str | None:
    keys = cpe_products(port.get("product"))
    if not keys:
        return None
    version = port.get("version")
    return f"cpe:/a:{keys[0]}" + (f":{version}" if version else "")


def _finding_text(finding: Mapping[str, Any]) -> str:
    parts = [f"severity: {finding.get('severity')}", str(finding.get("title") or "")]
    cves = list(finding.get("cve_ids") or [])
    if cves:
        basis = "; ".join(p for p in ("version only", finding.get("revision")) if p)
        parts.append(f"CVEs ({basis}): {', '.join(cves)}")
    conditional = list(finding.get("conditional_cve_ids") or [])
    if conditional:
        parts.append(f"conditional on the OS: {', '.join(conditional)}")
    return "\n".join(p for p in parts if p)


def _findings_by_port(report: Mapping[str, Any]) -> dict[tuple[str, int], Mapping[str, Any]]:
    return {(str(f["host"]), int(f["port"])): f for f in report.get("findings") or ()}


def _open_ports(
    host: Mapping[str, Any], findings: Mapping[tuple[str, int], Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The host's open ports, each with the distribution revision its finding kept."""
    out = []
    for port in host.get("open_ports") or ():
        finding = findings.get((str(host["address"]), int(port["port"]))) or {}
        out.append({**port, "revision": port.get("revision") or finding.get("revision")})
    return out


def to_nmap_xml(report: Mapping[str, Any], args: Sequence[str] = ()) -> str:
    """``report`` (a :class:`ScanReport`'s ``to_dict()``) as nmap XML; ``args`` the command."""
    start = _epoch(report.get("created_at"))
    end = _epoch(report.get("finished_at")) if report.get("finished_at") else start
    ports = _ports_scanned(report)
    root = ET.Element(
        "nmaprun",
        {
            "scanner": "nmap",
            "args": " ".join(["lewis", "scan", *args]).strip(),
            "start": str(start),
            "startstr": _timestr(start),
            "version": _version(),
            "xmloutputversion": XML_OUTPUT_VERSION,
        },
    )
    from ..domain.targets import parse_ports

    try:
        count = len(parse_ports(ports)) if ports else 0
    except Exception:  # a stored spec this version no longer reads: say what it was
        count = 0
    ET.SubElement(
        root,
        "scaninfo",
        {"type": "connect", "protocol": "tcp", "numservices": str(count), "services": ports},
    )
    ET.SubElement(root, "verbose", {"level": "0"})
    ET.SubElement(root, "debugging", {"level": "0"})
    findings = _findings_by_port(report)
    hosts = list(report.get("hosts") or ())
    for host in hosts:
        _host_element(root, host, findings, start, end)
    runstats = ET.SubElement(root, "runstats")
    status = str(report.get("status") or "")
    ET.SubElement(
        runstats,
        "finished",
        {
            "time": str(end),
            "timestr": _timestr(end),
            "elapsed": f"{max(0, end - start):.2f}",
            "summary": f"LEWIS scan {report.get('scan_id')} {status}: {len(hosts)} "
            f"IP address{'es' * (len(hosts) != 1)} scanned",
            "exit": "success" if status == "done" else "error",
            **({"errormsg": str(report["error"])} if report.get("error") else {}),
        },
    )
    ET.SubElement(runstats, "hosts", {"up": str(len(hosts)), "down": "0", "total": str(len(hosts))})
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE nmaprun>\n' + body + "\n"


def _host_element(
    root: ET.Element,
    host: Mapping[str, Any],
    findings: Mapping[tuple[str, int], Mapping[str, Any]],
    start: int,
    end: int,
) -> None:
    address = str(host["address"])
    node = ET.SubElement(root, "host", {"starttime": str(start), "endtime": str(end)})
    # connect() answered on some port or was refused: the host is up (a "user-set" target)
    ET.SubElement(node, "status", {"state": "up", "reason": "user-set", "reason_ttl": "0"})
    ET.SubElement(
        node, "address", {"addr": address, "addrtype": "ipv6" if ":" in address else "ipv4"}
    )
    names = ET.SubElement(node, "hostnames")
    if host.get("hostname"):
        ET.SubElement(names, "hostname", {"name": str(host["hostname"]), "type": "user"})
    ports = ET.SubElement(node, "ports")
    for state, reason in (("closed", "conn-refused"), ("filtered", "no-response")):
        count = int(host.get(state) or 0)
        if count:
            extra = ET.SubElement(ports, "extraports", {"state": state, "count": str(count)})
            ET.SubElement(extra, "extrareasons", {"reason": reason, "count": str(count)})
    for port in _open_ports(host, findings):
        number = int(port["port"])
        finding = findings.get((address, number))
        element = ET.SubElement(ports, "port", {"protocol": "tcp", "portid": str(number)})
        ET.SubElement(element, "state", {"state": "open", "reason": "syn-ack", "reason_ttl": "0"})
        service = ET.SubElement(element, "service", _service_attrs(port))
        cpe = _cpe(port)
        if cpe:
            ET.SubElement(service, "cpe").text = cpe
        if finding is not None:
            ET.SubElement(
                element, "script", {"id": "lewis-findings", "output": _finding_text(finding)}
            )


def to_grepable(report: Mapping[str, Any], args: Sequence[str] = ()) -> str:
    """``report`` in nmap's grepable format (``-oG``)."""
    start = _epoch(report.get("created_at"))
    end = _epoch(report.get("finished_at")) if report.get("finished_at") else start
    command = " ".join(["lewis", "scan", *args]).strip()
    lines = [f"# LEWIS {_version()} scan initiated {_timestr(start)} as: {command}"]
    hosts = list(report.get("hosts") or ())
    findings = _findings_by_port(report)
    for host in hosts:
        label = f"Host: {host['address']} ({host.get('hostname') or ''})"
        lines.append(f"{label}\tStatus: Up")
        entries = [_grepable_port(p) for p in _open_ports(host, findings)]
        line = f"{label}\tPorts: {', '.join(entries)}" if entries else label
        ignored = [(s, int(host.get(s) or 0)) for s in ("closed", "filtered")]
        ignored = [(s, n) for s, n in ignored if n]
        if ignored:
            state, count = max(ignored, key=lambda item: item[1])
            line += f"\tIgnored State: {state} ({count})"
        lines.append(line)
    lines.append(
        f"# LEWIS done at {_timestr(end)} -- {len(hosts)} IP address"
        f"{'es' * (len(hosts) != 1)} ({len(hosts)} host{'s' * (len(hosts) != 1)} up) "
        f"scanned in {max(0, end - start):.2f} seconds"
    )
    return "\n".join(lines) + "\n"


def _grepable_port(port: Mapping[str, Any]) -> str:
    def clean(text: object) -> str:  # nmap's own escaping: "/" would end the field
        return str(text or "").replace("/", "|").replace(",", " ")

    what = " ".join(
        str(p) for p in (port.get("product"), port.get("version"), port.get("revision")) if p
    )
    return f"{port['port']}/open/tcp//{clean(port.get('service') or 'unknown')}//{clean(what)}/"


__all__ = ["to_nmap_xml", "to_grepable", "XML_OUTPUT_VERSION"]
