"""The chaos suite: faults on the real stack, and what they cost.

    python -m bench.chaos                  # every experiment, full length (~10 min)
    python -m bench.chaos --short          # the shortened forms the tests run
    python -m bench.chaos io_kill beats2   # some of them

Per experiment it prints tasks submitted, completed, lost, run more than once (and whether
the duplicate runs were harmless), and the recovery time beside the configured timeout it
must stay within; full runs write ``bench/results/chaos.json`` and the Chaos section of
BENCHMARKS.md. Worker logs of the last run stay in ``bench/logs/chaos/``.
"""

from __future__ import annotations

from typing import Any

COMMAND = "python -m bench.chaos"


def render(data: dict[str, Any]) -> str:
    """The Chaos section of BENCHMARKS.md from a stored run."""
    from ..report import machine_line

    rows = []
    for r in data["results"]:
        recovery = "never" if r["recovery_s"] is None else f"{r['recovery_s']:.1f} s"
        dup = (
            f"{r['rerun']} ({r['duplicates']} completed twice), "
            f"{'harmless' if r['harmless'] else '**harmful**'}"
        )
        lost = f"{r['lost']}" + (f" (≤ {r['allowed_lost']} allowed)" if r["allowed_lost"] else "")
        verdict = "ok" if r["passed"] else "**FAILED**"
        notes = list(r["notes"])
        if r.get("refused"):
            notes.append(f"{r['refused']} submits refused while the broker was down")
        earlier = [h for h in r.get("history", []) if h.get("lost")]
        if earlier:
            notes.append(
                "earlier runs lost "
                + ", ".join(
                    f"{h['lost']} of {h['submitted']} ({h.get('when') or '?'})" for h in earlier
                )
            )
        runs = 1 + len(r.get("history", []))
        rows.append(
            f"| {r['experiment']} | {r['faults']} | {runs} | {r['submitted']} | {r['completed']} "
            f"| {lost} | {dup} | {recovery} / {r['bound_s']:.0f} s ({r['bound_name']}) "
            f"| {verdict} | {'; '.join(notes)} | `{COMMAND} {r['key']}` "
            f"at {r.get('code', '?').split(' ')[0]} |"
        )
    lossy = [
        r for r in data["results"] if r["lost"] or any(h.get("lost") for h in r.get("history", []))
    ]
    findings = (
        []
        if not lossy
        else [
            "",
            "**Where tasks were lost.** Every lost task so far had *never started* (the ledger "
            "holds no start for it), no worker log names its Celery id, and after the run its "
            "message was *nowhere* in the broker (not unacked, not queued). Both fit an "
            "at-most-once window of kombu's Redis transport: a worker takes a message with BRPOP "
            "(Redis removes it) and records it in the `unacked` hash only afterwards "
            "(`basic_consume`'s callback → `QoS.append`, a second round trip). An io worker killed "
            "between the two loses the message (io kill: 1–3 of ~1,250 in 8 kills). For the "
            "redis kill -9 (0–2 of ~136, intermittent) the same window is one candidate (the pop "
            "reached the AOF, the reply never reached the worker); another is Redis postponing "
            "the AOF write behind a slow everysec fsync while it already answered the producer; "
            "not yet told apart. The first is closed since branch `atomic`: our transport "
            "(lewis_tasks/infra/transport.py) takes a message with a Lua script that pops it and "
            "writes `unacked` in the same step (docs/atomic-unacked.md); the second is Redis' own.",
        ]
    )
    return "\n".join(
        [
            "## Chaos: faults under load",
            "",
            machine_line(data["machine"]),
            "Each experiment runs on loopback on real "
            "processes (`lewis worker`, `lewis beat`, `lewis up`, redis-server) with the short "
            "recovery settings of `bench/chaos/cluster.py` (visibility timeout 16 s for every "
            "worker, hard time limits 9 s (io, control) and 15 s (cpu), `tasks.max_redeliveries` 2, "
            "heartbeat every 1 s, beat lock timeout 3 s); the cluster is two io workers, a cpu "
            "worker (2 children) and a control worker on a redis-server of its own (AOF on), "
            "`lewis up` for the embedded case. Every task has an id and records its runs in a ledger Redis outside the "
            "fault (starts, completed runs, one HSETNX record); *lost* = submitted − completed; "
            "*run > 1* = ids started more than once (how many completed twice); *harmless* = "
            "each completed id still holds exactly one record. Scans (real `lewis.scan` jobs of 48 "
            "ports on loopback listeners, one every 2 s beside the task load) count as completed "
            "when done with exactly the kernel's open ports, as harmless when their port rows and "
            "findings are stored once; their *run > 1* counts scans with a chunk delivered again "
            "or a merge killed and run again. In the cpu experiment every other kill lands in a "
            "merge (after it read the chunks, before it stored the findings; armed in "
            'tests/support/killtasks.py). In the host kill a second "host" (two io workers '
            "started from another working directory on the same broker and database) is killed "
            "whole (kill -9 of every process at once) while a scan chunk runs on it, and not "
            "started again. Recovery: worker and host kills, from the "
            "kill to the completion of the tasks (scans) it interrupted (worst of the kills); broker "
            "faults, from the fault's end until every worker answers a ping and a task completed; "
            "beats, from the kill to the new leader's first heartbeat; poison, from submit to its "
            "failure. Submits the broker refused during an outage (the caller got "
            "BrokerUnavailable) are not counted as submitted. The figures are the last run's; *runs* "
            "counts every run stored, and the notes name earlier runs that lost tasks.",
            "",
            "| experiment | faults | runs | submitted | completed | lost | run > 1 "
            "| recovery / bound | verdict | notes | command |",
            "|---|---:|---:|---:|---:|---:|---|---|---|---|---|",
            *rows,
            *findings,
            *_atomic_take_cost(),
        ]
    )


def _atomic_take_cost() -> list[str]:
    """bench/atomic.py's last run, if any: what closing the BRPOP window costs."""
    import json

    from ..atomic import cost_lines
    from ..run import RESULTS

    path = RESULTS / "atomic.json"
    return cost_lines(json.loads(path.read_text())) if path.exists() else []
