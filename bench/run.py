"""Run the benchmarks and rewrite BENCHMARKS.md.

    python -m bench.run                 # every suite, medians of 3
    python -m bench.run platform -r 1   # one suite, one repetition (quick look)
    python -m bench.run platform --quick -r 1   # smoke test, tiny N: nothing written (~1-2 min)
    python -m bench.run platform --quick -r 1 --peers-only   # the peers alone (~30 s)

The platform suite measures the peers (huey, dramatiq, taskiq; bench/peers) in the same run
when their bench-only packages are installed (scripts/bench-peers); a missing one is left out
with one line saying so. ``--peers huey,taskiq`` picks some, ``--peers none`` none.

Each suite writes ``bench/results/<suite>.json`` (kept in git, so BENCHMARKS.md can always be
rebuilt from every suite's last run); BENCHMARKS.md is then rendered from all of them.
Run nothing else heavy meanwhile: the machine has 2 cores and the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import ROOT, median, private_redis
from .peers import PEERS

RESULTS = ROOT / "bench" / "results"
PEER_PACKAGES = {"huey": ("huey",), "dramatiq": ("dramatiq",), "taskiq": ("taskiq", "taskiq-redis")}
SUITES = ("platform", "scan", "http", "profiling", "monitoring", "scaling", "alerting")


def machine(peers: Any = ()) -> dict[str, Any]:
    """This machine and the package versions (the peers' too, for those measured), in the
    shape BENCHMARKS.md shows."""
    from lewis_tasks.domain.benchstats import machine_info

    names = ("celery", "kombu", "redis", "aiohttp", "sqlalchemy")
    info = machine_info(names + tuple(d for p in peers for d in PEER_PACKAGES[p]))
    return {
        "cpu": info.cpu_model,
        "cores": info.cores_logical,
        "memory_gb": round(info.memory_total_bytes / 2**30, 1),
        "python": info.python,
        "os": info.os,
        "versions": dict(info.packages),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# sizes of the platform suite's shapes: as BENCHMARKS.md reports them, and a smoke-test run
FULL = {
    "samples": 400,
    "warmup": 30,
    "drain": 10_000,
    "enqueue": 5_000,
    "batched": 50_000,
    "waits": 2_000,
    "pool_waits": 400,
}
QUICK = {
    "samples": 50,
    "warmup": 10,
    "drain": 200,
    "enqueue": 500,
    "batched": 2_000,
    "waits": 200,
    "pool_waits": 100,
}


def run_platform(
    runs: int, sizes: dict[str, int] = FULL, peer_names: tuple[str, ...] = (), ours: bool = True
) -> dict[str, Any]:
    """LEWIS, bare Celery and the peers (bench.peers) through the same shapes on one private
    Redis, interleaved: each repetition runs every system through a shape before the next.
    ``ours=False`` runs the peers alone (a smoke test of bench.peers)."""
    from . import peers as peer_bench
    from . import platform as plat

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def record(bench: str, system: str, value: dict[str, Any] | None) -> None:
        if value is None:  # a peer without that form (no batched enqueue)
            return
        results.setdefault(bench, {}).setdefault(system, []).append(value)
        print(
            f"  {bench:<15} {system:<9} {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in value.items()})}",
            flush=True,
        )

    n = sizes
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        systems = {
            name: plat.System(name, server, Path(tmp))
            for name in (("baseline", "lewis") if ours else ())
        }
        peers = peer_bench.load(peer_names, server, Path(tmp))
        steps: list[
            tuple[
                str,
                Callable[[plat.System], dict[str, Any]],
                Callable[[peer_bench.Peer], dict[str, Any] | None] | None,
            ]
        ] = [
            (
                "latency",
                lambda s: plat.bench_latency(s, n["samples"], n["warmup"]),
                lambda p: peer_bench.round_trip(p, n["samples"], n["warmup"]),
            ),
            # a peer has one queue: its no-op drain stands beside both LEWIS drain rows
            (
                "drain_io",
                lambda s: plat.bench_drain(s, "noop_io", n["drain"]),
                lambda p: peer_bench.drain(p, n["drain"]),
            ),
            ("drain_cpu", lambda s: plat.bench_drain(s, "noop_cpu", n["drain"]), None),
            # submit_many as shipped: io no-ops packed by their measured runtime (LEWIS only)
            (
                "drain_io_default",
                lambda s: (
                    plat.bench_drain(s, "noop_io", n["drain"], pack=None)
                    if s.name == "lewis"
                    else None
                ),
                None,
            ),
            (
                "enqueue",
                lambda s: plat.bench_enqueue(s, n["enqueue"]),
                lambda p: peer_bench.enqueue(p, n["enqueue"]),
            ),
            (
                "io_wait",
                lambda s: plat.bench_io_wait(s, n["waits"]),
                lambda p: peer_bench.waits(p, n["waits"]),
            ),
        ]
        try:
            for _ in range(runs):
                for bench, func, peer_func in steps:
                    for name, system in systems.items():  # interleaved: drift hits every side
                        record(bench, name, func(system))
                    for name, peer in peers.items() if peer_func else ():
                        record(bench, name, peer_func(peer))  # type: ignore[misc]
                for name, peer in peers.items():
                    record(
                        "enqueue_batched",
                        name,
                        peer_bench.enqueue(peer, n["batched"], batched=True),
                    )
                if not ours:
                    continue
                record(
                    "enqueue_batched",
                    "lewis",
                    plat.bench_enqueue(systems["lewis"], count=n["batched"], batched=True),
                )
                # the same independent waits, 50 calls to a message (submit_many(pack=50))
                record(
                    "io_wait_packed",
                    "lewis",
                    plat.bench_io_wait(systems["lewis"], count=n["waits"], pack=50),
                )
                # the io pool choice: the same io profile on prefork (2 workers x 2 children)
                prefork = plat.System("lewis_prefork", server, Path(tmp))
                record("io_pool_drain", "prefork", plat.bench_drain(prefork, "noop_io", n["drain"]))
                record(
                    "io_pool_wait", "prefork", plat.bench_io_wait(prefork, count=n["pool_waits"])
                )
                record(
                    "io_pool_wait",
                    "threads",
                    plat.bench_io_wait(systems["lewis"], count=n["pool_waits"]),
                )
        finally:
            for peer in peers.values():
                peer.close()
    return {
        "machine": machine(peers),
        "runs": runs,
        "sizes": sizes,
        "results": results,
        "peers": sorted(peers),
        "peer_batched": {name: peer.client.batched for name, peer in peers.items()},
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float))]
    return {k: median([s[k] for s in samples]) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", default=list(SUITES))
    parser.add_argument("-r", "--runs", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="platform suite at tiny N (smoke test): prints, writes nothing",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="peers beside LEWIS in the platform suite (comma list, or none)",
    )
    parser.add_argument(
        "--peers-only",
        action="store_true",
        help="with --quick: the peers alone, no LEWIS or Celery (a smoke test)",
    )
    args = parser.parse_args(argv)
    peer_names = tuple(p for p in args.peers.split(",") if p and p != "none")
    unknown = set(peer_names) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)} (peers: {', '.join(PEERS)})")
    if args.quick and args.suites != ["platform"]:
        parser.error("--quick runs the platform suite only: python -m bench.run platform --quick")
    if args.peers_only and not args.quick:
        parser.error("--peers-only is a smoke test: use it with --quick")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suite in args.suites:
        if suite not in SUITES:
            parser.error(f"unknown suite {suite!r} (suites: {', '.join(SUITES)})")
        if suite == "platform":
            runner: Callable[[int], dict[str, Any]] = functools.partial(
                run_platform,
                sizes=QUICK if args.quick else FULL,
                peer_names=peer_names,
                ours=not args.peers_only,
            )
        else:
            try:
                runner = importlib.import_module(f"bench.{suite}").run
            except ModuleNotFoundError:
                print(f"suite {suite}: not written yet, skipped")
                continue
        print(f"suite {suite} ({args.runs} runs)", flush=True)
        data = runner(args.runs)
        if args.quick:  # figures at tiny N mean nothing: shown, never stored
            from .report import render_platform

            if not args.peers_only:
                print(render_platform(data))
            return 0
        (RESULTS / f"{suite}.json").write_text(json.dumps(data, indent=1, default=str))
        from .report import render_suite, replace_section

        # only this suite's section is rewritten: hand-written ones (Fleet, Interactive, …)
        # and suites not run now stay as they are
        replace_section(ROOT / "BENCHMARKS.md", render_suite(suite, data))
        print(f"wrote BENCHMARKS.md: {suite}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
