"""Service identification: LEWIS against ``nmap -sV``, port by port (BENCHMARKS.md, "Service
identification vs nmap -sV").

    python -m bench.services_vs_nmap --host 127.0.0.1 --ports 6379,5432,5672,4369,4222,1883,3306,25672
    python -m bench.services_vs_nmap --listeners 24 --seed 7      # the test listener fixture

Runs ``nmap -sV -Pn -n -p PORTS HOST -oX -`` and LEWIS's :func:`identify_services` on the same
ports, and prints a Markdown table: the service name, product and version each reports, and
whether the names agree (a LEWIS guess ``amqp?`` agrees with nmap's ``amqp`` only when nmap
also had no answer to go on, i.e. its method was "table"). With ``--listeners`` the truth the
fixture knows is shown too. Loopback addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

from lewis_tasks.domain.scope import Scope
from lewis_tasks.domain.services import identify_services


def nmap_services(host: str, ports: list[int]) -> dict[int, dict[str, str]]:
    """Per port: name, product, version, method as nmap -sV reports them."""
    if shutil.which("nmap") is None:
        sys.exit("nmap not installed (Debian: apt-get install nmap)")
    xml = subprocess.run(
        ["nmap", "-sV", "-Pn", "-n", "-p", ",".join(map(str, ports)), host, "-oX", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out: dict[int, dict[str, str]] = {}
    for port in ET.fromstring(xml).iter("port"):
        service = port.find("service")
        attrs = dict(service.attrib) if service is not None else {}
        out[int(port.get("portid", "0"))] = attrs
    return out


def lewis_services(host: str, ports: list[int]) -> dict[int, Any]:
    scope = Scope.from_allow(["127.0.0.0/8", "::1"])
    found = asyncio.run(identify_services(host, ports, scope=scope, banner_timeout=2.0))
    return {info.port: info for info in found}


def agree(lewis_name: str, nmap: dict[str, str]) -> str:
    name = nmap.get("name", "")
    if name in ("", "unknown"):
        return "yes (neither names it)" if lewis_name == "unknown" else "LEWIS named it"
    if lewis_name == "mqtt" and name.startswith("mosquitto"):
        return "yes (nmap's name is Mosquitto's $SYS version string)"
    if lewis_name.endswith("?"):
        return (
            "yes (both guess)"
            if nmap.get("method") == "table" and lewis_name[:-1] == name
            else "no"
        )
    if nmap.get("method") == "table":
        return "LEWIS named it" if lewis_name != "unknown" else "no"
    return "yes" if _same(lewis_name, name) else "no"


_ALIASES = {("postgresql", "postgresql"), ("mysql", "mysql"), ("erlang-dist", "erlang-node")}


def _same(a: str, b: str) -> bool:
    return a == b or (a, b) in _ALIASES or a.split("-")[0] == b.split("-")[0]


def table(host: str, ports: list[int], truth: dict[int, Any] | None = None) -> str:
    nmap = nmap_services(host, ports)
    ours = lewis_services(host, ports)
    head = ["port", "nmap -sV", "LEWIS", "names agree"] + (["truth (fixture)"] if truth else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    agreed, right = 0, {"nmap -sV": 0, "LEWIS": 0}
    for port in ports:
        n, info = nmap.get(port, {}), ours[port]
        verdict = agree(info.name, n)
        agreed += verdict.startswith("yes")
        n_text = " ".join(p for p in (n.get("name"), n.get("product"), n.get("version")) if p)
        if n.get("method") == "table":
            n_text += " (table)"
        l_text = " ".join(p for p in (info.name, info.product, info.version) if p)
        cells = [str(port), n_text or "—", l_text, verdict]
        if truth:
            t = truth.get(port)
            cells.append(
                "silent"
                if t is None
                else " ".join(p for p in (t["name"], t["product"], t["version"]) if p)
            )
            want = "unknown" if t is None else t["name"]
            right["LEWIS"] += info.name.rstrip("?") == want or (
                t is None and info.name.endswith("?")
            )
            got = n.get("name", "unknown") if n.get("method") != "table" else "unknown"
            right["nmap -sV"] += got == want or (t is None and n.get("method") == "table")
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(f"\n{agreed} of {len(ports)} ports: the same service name.")
    if truth:
        rows.append(
            " · ".join(
                f"{who} names {n} of {len(ports)} as the fixture serves them"
                for who, n in right.items()
            )
            + " (a silent port: unknown or "
            "a table guess)."
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", default=None, help="comma-separated ports on --host")
    parser.add_argument(
        "--listeners",
        type=int,
        default=0,
        help="start this many fixture listeners (tests/support/listeners.py)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.listeners:
        from tests.support.listeners import running_listeners

        with running_listeners(
            args.listeners, host=args.host, seed=args.seed, banner_share=0.75
        ) as fixture:
            truth = {int(p): t for p, t in fixture.truth()["ports"].items()}  # type: ignore[attr-defined]
            print(table(args.host, sorted(truth), truth))
        return
    if not args.ports:
        parser.error("--ports or --listeners")
    print(table(args.host, [int(p) for p in args.ports.split(",")]))


if __name__ == "__main__":
    main()
