"""CPU per URL of one io process during an HTTP batch, beside the raw aiohttp script (issue 18.5).

    python -m bench.http_cpu [--runs 3] [--py-spy PATH [--raw FILE]] [--json FILE]

The private nginx of ``bench.http`` (a 512-byte file) and one ``lewis up --detach`` stack with
one io process (``bench.http.stack``). Each run, interleaved: ``submit_http_batch`` of 20,000
GETs of the file, timed from submit to the merged summary (every row persisted), with the io
process's CPU per URL (user + system of every thread, /proc); then ``bench/rawhttp.py`` (one
aiohttp process, 100 coroutines, limit 100) with its client's CPU per URL less its start-up.
With ``--py-spy`` a GIL-holding profile (``py-spy record --gil``) of the io process over three
more batches is summarised by package and function (``bench.io_dispatch.summarise``).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import median
from bench.http import BATCH, bench_batch, bench_raw, nginx, stack
from bench.io_dispatch import summarise


def run(runs: int, spy: str | None, keep_raw: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"lewis": [], "raw": [], "profile": None}
    with (
        tempfile.TemporaryDirectory() as tmp,
        nginx(Path(tmp)) as server,
        stack(Path(tmp)) as running,
    ):
        meters = {"io": running.io_pids}
        bench_batch(server.url, meters)  # warm-up: the session, the first SQLite pages
        for _ in range(runs):
            ours, raw = bench_batch(server.url, meters), bench_raw(server.url)
            out["lewis"].append(ours)
            out["raw"].append(raw)
            print(
                f"  lewis {ours['rps']:,.0f}/s, io {ours['io_cpu_us']:.0f} us/URL | "
                f"raw {raw['rps']:,.0f}/s, client {raw['client_cpu_us']:.0f} us/URL",
                flush=True,
            )
        if spy:
            raw_file = Path(tmp) / "spy.txt"
            profiler = subprocess.Popen(
                [spy, "record", "-p", str(running.io_pids[0]), "--gil", "-r", "400"]
                + ["-f", "raw", "-o", str(raw_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            for _ in range(3):
                bench_batch(server.url, meters)
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(60)
            out["profile"] = summarise(raw_file)
            if keep_raw is not None:  # py-spy's raw stacks, for a closer look
                keep_raw.write_bytes(raw_file.read_bytes())
    return out


def render(data: dict[str, Any]) -> str:
    def med(side: str, key: str) -> float:
        return median([r[key] for r in data[side]])

    io_us, raw_us = med("lewis", "io_cpu_us"), med("raw", "client_cpu_us")
    rps, raw_rps = med("lewis", "rps"), med("raw", "rps")
    paired = median([a["rps"] / b["rps"] for a, b in zip(data["lewis"], data["raw"], strict=True)])
    return "\n".join(
        [
            "| measure | LEWIS (one io process) | raw aiohttp (same run) | ratio |",
            "|---|---:|---:|---:|",
            f"| CPU per URL (µs) | {io_us:.0f} | {raw_us:.0f} | {io_us / raw_us:.2f} |",
            f"| batch of {BATCH:,} GETs (req/s), rows persisted | {rps:,.0f} | "
            f"{raw_rps:,.0f} | {rps / raw_rps:.2f} (paired {paired:.2f}) |",
        ]
    )


def main() -> None:
    from bench.run import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--py-spy", dest="spy", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw stacks here")
    args = parser.parse_args()
    data = {"machine": machine(), **run(args.runs, args.spy, args.raw)}
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    print(render(data))
    if data["profile"]:
        print(json.dumps(data["profile"], indent=1))


if __name__ == "__main__":
    main()
