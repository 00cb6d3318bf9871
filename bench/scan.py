"""Scan benchmarks: LEWIS's distributed scan beside nmap, same machine, same minutes.

* correctness — 300 loopback listeners (``tests/support/listeners.py --count 300 --seed 7``,
  a separate process; a third speak services) on 127.0.0.1: the open set of a full ``-p -``
  scan through the stack against the kernel's listening set (taken before and after), and the
  service names against the fixture's truth and against ``nmap -sT -sV`` on the service ports
  (run once: -sV takes minutes; compared where nmap's name came from a probe, not its table);
* speed — full ``-p -`` of 127.0.0.1 through a running stack (private Redis, SQLite, two
  ``lewis worker io`` processes, one cpu worker), submit → report in the database, without
  service identification (nmap ``-sT`` does none), versus ``nmap -sT -p- -T4 -n -Pn
  127.0.0.1``; interleaved, ``runs`` times each. Also: the bare domain scanner in this one
  process, and one full scan with service identification.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .harness import (
    ROOT,
    db_url,
    lewis_env,
    lewis_worker_argv,
    median,
    private_redis,
    processes,
    wait_workers,
)

ADDRESS = "127.0.0.1"
LISTENERS = 300
SEED = 7


def run(runs: int) -> dict[str, Any]:
    from .run import machine

    with _listeners() as truth:
        with (
            private_redis() as server,
            tempfile.TemporaryDirectory(prefix="lewis-bench-scan-") as tmp,
        ):
            env = lewis_env(db_url(server, 1), Path(tmp))
            for step in (["db", "upgrade"], ["vulns", "import", "--sample"]):
                subprocess.run(
                    [sys.executable, "-m", "lewis_tasks.cli", *step],
                    env=env,
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
            app = _use_stack(env)
            argvs = [lewis_worker_argv("io"), lewis_worker_argv("io"), lewis_worker_argv("cpu")]
            with processes(argvs, env, "scan-stack"):
                wait_workers(app, len(argvs))
                _scan(services=False)  # warm-up: imports, connections, first SQLite pages
                correctness = _correctness(truth)
                speed = _speed(runs)
        bare = _bare(runs)
        print("  nmap -sV on the service ports (minutes)…", flush=True)
        nmap_sv = _nmap_versions(truth, correctness["services"])
    return {
        "machine": machine(),
        "runs": runs,
        "listeners": LISTENERS,
        "seed": SEED,
        "correctness": correctness,
        "speed": speed,
        "bare": bare,
        "nmap_sv": nmap_sv,
    }


@contextmanager
def _listeners() -> Any:
    proc = subprocess.Popen(
        [
            sys.executable,
            "tests/support/listeners.py",
            "--count",
            str(LISTENERS),
            "--seed",
            str(SEED),
            "--host",
            ADDRESS,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        truth = json.loads(proc.stdout.readline())
        yield {int(p): v for p, v in truth["ports"].items()}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def _use_stack(env: dict[str, str]) -> Any:
    """Point this process (the producer) at the benchmark stack."""
    from lewis_tasks.infra import cache, config, redis_client
    from lewis_tasks.infra.celery_app import app, configure_app

    settings = config.load_settings(env=env)
    config.set_settings(settings)
    redis_client.reset_clients()
    cache.reset_cache()
    return configure_app(app, settings)


def _listening() -> set[int]:
    from tests.support.listeners import listening_ports

    return listening_ports(ADDRESS)


def _agrees(name: str | None, want: dict[str, Any] | None) -> bool:
    """Our name for a listener as the fixture says; a silent one (no service) may be named
    from the nmap-services table as a marked guess (``amqp?``, issue 17.4), as nmap does."""
    if want is None:
        return name == "unknown" or (name is not None and name.endswith("?"))
    return name == want.get("name")


def _scan(services: bool) -> tuple[float, Any]:
    from lewis_tasks.producer.scan import submit_scan

    began = time.perf_counter()
    report = submit_scan(ADDRESS, ports="-", services=services).wait(timeout=300, interval=0.01)
    return time.perf_counter() - began, report


def _correctness(truth: dict[int, Any]) -> dict[str, Any]:
    before = _listening()
    seconds, report = _scan(services=True)
    after = _listening()
    stable, changing = before & after, before ^ after
    ours = set(report.open_ports().get(ADDRESS, []))
    named = {p["port"]: p for p in report.hosts[0].open_ports}
    agree = [p for p, want in truth.items() if _agrees(named.get(p, {}).get("service"), want)]
    return {
        "open": len(ours),
        "truth_open": len(stable),
        "exact": ours - changing == stable - changing,
        "fixture_found": len(set(truth) & ours),
        "missed": sorted(stable - changing - ours)[:20],
        "false_open": sorted(ours - changing - stable)[:20],
        "changing": len(changing),
        "services_agree_with_fixture": len(agree),
        "fixture_ports": len(truth),
        "seconds_with_services": seconds,
        "findings": report.summary.get("by_severity"),
        "services": {str(p): v["service"] for p, v in named.items()},
    }


def _speed(runs: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"lewis": [], "nmap": []}
    for _ in range(runs):  # interleaved: drift on the shared machine hits both sides
        before = _listening()
        seconds, report = _scan(services=False)
        nmap_s, nmap_open = _nmap_full()
        stable = before & _listening()
        ours = set(report.open_ports().get(ADDRESS, []))
        out["lewis"].append(
            {
                "seconds": seconds,
                "ports_per_s": 65535 / seconds,
                "open": len(ours),
                "exact": ours == stable,
            }
        )
        out["nmap"].append(
            {
                "seconds": nmap_s,
                "ports_per_s": 65535 / nmap_s,
                "open": len(nmap_open),
                "exact": nmap_open == stable,
            }
        )
        print(
            f"  scan  lewis {seconds:.2f} s ({len(ours)} open, exact {ours == stable})  "
            f"nmap {nmap_s:.2f} s ({len(nmap_open)} open)",
            flush=True,
        )
    return out


def _nmap_full() -> tuple[float, set[int]]:
    began = time.perf_counter()
    xml = subprocess.run(
        ["nmap", "-sT", "-p-", "-T4", "-n", "-Pn", ADDRESS, "-oX", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seconds = time.perf_counter() - began
    return seconds, {
        int(p.get("portid", 0))
        for p in ET.fromstring(xml).iter("port")
        if p.find("state") is not None and p.find("state").get("state") == "open"
    }  # type: ignore[union-attr]


def _bare(runs: int) -> list[dict[str, Any]]:
    from lewis_tasks.domain.portscan import scan_ports_blocking
    from lewis_tasks.domain.scope import Scope
    from lewis_tasks.infra.runtime import raise_fd_limit

    raise_fd_limit()
    out = []
    for _ in range(runs):
        before = _listening()
        result = scan_ports_blocking(ADDRESS, range(1, 65536), scope=Scope.from_allow())
        stable = before & _listening()
        out.append(
            {
                "seconds": result.seconds,
                "ports_per_s": result.ports_per_second,
                "exact": set(result.open) == stable,
            }
        )
    return out


def _nmap_versions(truth: dict[int, Any], ours: dict[str, str]) -> dict[str, Any]:
    """nmap -sT -sV on the listeners that speak a service; names compared where nmap probed."""
    ports = sorted(p for p, v in truth.items() if v)
    began = time.perf_counter()
    xml = subprocess.run(
        ["nmap", "-sT", "-sV", "-n", "-Pn", "-p", ",".join(map(str, ports)), ADDRESS, "-oX", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seconds = time.perf_counter() - began
    named: dict[int, str] = {}
    for port in ET.fromstring(xml).iter("port"):
        service = port.find("service")
        if service is not None and service.get("method") == "probed" and service.get("name"):
            named[int(port.get("portid", 0))] = service.get("name", "")
    same = {"postgres": "postgresql", "pop3s": "pop3", "imaps": "imap"}
    agree = [p for p, name in named.items() if same.get(name, name) == ours.get(str(p))]
    disagree = {
        str(p): {"nmap": named[p], "lewis": ours.get(str(p))} for p in named if p not in agree
    }
    return {
        "ports": len(ports),
        "seconds": seconds,
        "nmap_named": len(named),
        "agree": len(agree),
        "disagree": disagree,
        "lewis_named": sum(1 for p in ports if ours.get(str(p), "unknown") != "unknown"),
    }


def _disagreements(disagree: dict[str, dict[str, str]]) -> str:
    pairs: dict[tuple[str, str], int] = {}
    for v in disagree.values():
        pairs[(v["nmap"], str(v["lewis"]))] = pairs.get((v["nmap"], str(v["lewis"])), 0) + 1
    return "; ".join(f"{n} ports: nmap `{a}`, LEWIS `{b}`" for (a, b), n in sorted(pairs.items()))


def render(data: dict[str, Any]) -> str:
    m, c, sv = data["machine"], data["correctness"], data["nmap_sv"]
    ours = median([r["seconds"] for r in data["speed"]["lewis"]])
    nmap = median([r["seconds"] for r in data["speed"]["nmap"]])
    bare = median([r["ports_per_s"] for r in data["bare"]])
    exact = sum(r["exact"] for r in data["speed"]["lewis"])
    nmap_exact = sum(r["exact"] for r in data["speed"]["nmap"])
    n = data["runs"]
    rows = [
        (
            "Full `-p -` of 127.0.0.1, wall (s): submit → report stored, 2 io workers",
            f"{ours:.2f}",
            f"{nmap:.2f}",
            f"{ours / nmap:.2f}",
            "≤ 1.0",
        ),
        (
            "  the same in ports/s",
            f"{65535 / ours:,.0f}",
            f"{65535 / nmap:,.0f}",
            f"{nmap / ours:.2f}",
            "29–52k (nmap)",
        ),
        ("  runs whose open set was exact", f"{exact}/{n}", f"{nmap_exact}/{n}", "", f"{n}/{n}"),
        (
            "Bare domain scanner, 1 process (ports/s)",
            f"{bare:,.0f}",
            f"{65535 / nmap:,.0f}",
            f"{bare / (65535 / nmap):.2f}",
            "~42k (epoll anchor)",
        ),
        (
            f"Open set vs the kernel's ({c['truth_open']} listening, {data['listeners']} ours)",
            "exact" if c["exact"] else f"missed {c['missed']}, false {c['false_open']}",
            "",
            "",
            "exact",
        ),
        (
            f"Services named as the fixture says ({c['fixture_ports']} ports)",
            f"{c['services_agree_with_fixture']}/{c['fixture_ports']}",
            "",
            "",
            "all",
        ),
        (
            f"Service names vs `nmap -sV` where it probed one ({sv['ports']} service ports)",
            f"{sv['agree']}/{sv['nmap_named']} agree",
            f"named {sv['nmap_named']}/{sv['ports']}",
            "",
            "all agree",
        ),
        (
            "Full `-p -` with service identification, wall (s)",
            f"{c['seconds_with_services']:.1f}",
            f"-sV on {sv['ports']} ports: {sv['seconds']:.0f}",
            "",
            "—",
        ),
    ]
    from .report import machine_line

    lines = [
        "## Scan: distributed port scan beside nmap",
        "",
        f"{machine_line(m)}. Medians of {n} interleaved runs.",
        "",
        "| measure | LEWIS | nmap | ratio | goal / anchor |",
        "|---|---:|---:|---:|---|",
        *[f"| {a} | {b} | {c_} | {d} | {e} |" for a, b, c_, d, e in rows],
        "",
        f"How: {data['listeners']} listeners (`tests/support/listeners.py --count "
        f"{data['listeners']} --seed {data['seed']}`, a separate process, a third speaking "
        "services) on 127.0.0.1. LEWIS: a private Redis, SQLite, two `lewis worker io` "
        "processes (threads pool) and one `lewis worker cpu`; timed from `submit_scan(ports='-', "
        "services=False)` to the merged report in the database (8 chunk tasks in a chord, the "
        "merge on the cpu queue). nmap: `nmap -sT -p- -T4 -n -Pn 127.0.0.1`, wall clock of the "
        "process. Exact = the open set equals the kernel's listening set (/proc/net/tcp, taken "
        "before and after). Bare = `scan_ports_blocking` over 1–65535 in the benchmark process. "
        f"`nmap -sT -sV` ran once, on the {sv['ports']} listeners that speak a service; names "
        "compared only where nmap's came from a probe (not its port table)"
        + (
            f"; where they disagree ({_disagreements(sv['disagree'])})"
            + (
                ", LEWIS's name is the fixture's truth — it names all "
                f"{c['fixture_ports']} listeners as the fixture says."
                if c["services_agree_with_fixture"] == c["fixture_ports"]
                else "."
            )
            if sv["disagree"]
            else "."
        ),
    ]
    return "\n".join(lines)
