"""profile_call: hot functions, allocation sites, exceptions, deadlines, pstats files, bounds."""

from __future__ import annotations

import dataclasses
import json
import pstats
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from lewis_tasks.domain.profiler import Limits, Registry, profile_call
from lewis_tasks.errors import InvalidInput
from lewis_tasks.infra.config import ProfilingSettings

MiB = 1 << 20
LIMITS = Limits(max_seconds=10.0, top_n=20, max_iterations=1000, max_concurrent=8)


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _hot() -> int:
    return sum(_burn(60_000) for _ in range(3))


def _keep_big() -> bytearray:
    return bytearray(16 * MiB)  # the line the current sites must name


def _peak_then_free() -> int:
    held = bytearray(24 * MiB)  # the line the peak sites must name
    time.sleep(0.5)  # the watcher samples every 10 ms: many chances to see the peak
    size = len(held)
    del held
    return size


def _fails() -> None:
    _burn(1000)
    raise ValueError("target broke on purpose")


def _spin() -> None:
    while True:
        pass


def _spin_swallowing() -> None:
    count = 0
    while True:
        try:
            count += 1
        except Exception:  # the deadline must not be swallowed by this
            count = 0


def _line_of(func: object, needle: str) -> int:
    code = func.__code__  # type: ignore[attr-defined]
    lines = Path(code.co_filename).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text and i > code.co_firstlineno)


def test_hot_function_tops_own_time_and_appears_in_cumulative() -> None:
    report = profile_call(_hot, top_n=10, max_seconds=10, limits=LIMITS)

    assert report.ok and not report.timed_out
    assert report.by_tottime[0].function == "_burn"
    burn = next(r for r in report.by_cumulative if r.function == "_burn")
    assert burn.ncalls == 3 and burn.file == __file__
    assert burn.location == f"{__file__}:{burn.line}(_burn)"
    assert burn.percall_cumtime == pytest.approx(burn.cumtime / 3)
    assert any(r.function == "_hot" for r in report.by_cumulative)
    assert report.wall_seconds > 0 and report.cpu_seconds > 0
    assert len(report.by_cumulative) <= 10


def test_rows_hide_the_profiler_itself() -> None:
    report = profile_call(_hot, top_n=50, max_seconds=10)
    files = {r.file for r in report.by_cumulative}
    assert files and not any(
        f.endswith(("domain/profiler.py", "domain/memsites.py")) for f in files
    )
    assert not any("_lsprof" in r.function for r in report.by_cumulative)


def test_current_sites_name_a_kept_allocation() -> None:
    report = profile_call(_keep_big, top_n=5, max_seconds=10)

    assert report.memory is not None
    top = report.memory.current_sites[0]
    assert (top.file, top.line) == (__file__, _line_of(_keep_big, "bytearray(16"))
    assert top.size_bytes >= 16 * MiB
    assert report.memory.retained_bytes >= 16 * MiB


def test_peak_sites_name_an_allocation_freed_before_return() -> None:
    report = profile_call(_peak_then_free, top_n=5, max_seconds=10)

    memory = report.memory
    assert memory is not None
    assert memory.peak_bytes >= 24 * MiB
    assert memory.retained_bytes < MiB
    line = _line_of(_peak_then_free, "bytearray(24")
    assert any(s.line == line and s.size_bytes >= 24 * MiB for s in memory.peak_sites)
    assert not any(s.line == line for s in memory.current_sites)


def test_raising_function_still_gives_its_profile_with_the_exception() -> None:
    report = profile_call(_fails, top_n=10, max_seconds=10)

    assert not report.ok and not report.timed_out
    assert report.exception is not None
    assert report.exception.type == "ValueError"
    assert report.exception.message == "target broke on purpose"
    assert "_fails" in report.exception.traceback
    assert {"_fails", "_burn"} <= {r.function for r in report.by_cumulative}
    assert "RAISED ValueError: target broke on purpose" in report.format_table()


def test_run_past_max_seconds_is_stopped_and_reported() -> None:
    report = profile_call(_spin, top_n=5, max_seconds=0.3)

    assert report.timed_out and report.exception is not None
    assert report.exception.type.endswith("DeadlineExceeded")
    assert any(r.function == "_spin" for r in report.by_tottime)
    assert "STOPPED after max_seconds=0.3" in report.format_table()


def test_except_exception_does_not_swallow_the_deadline() -> None:
    report = profile_call(_spin_swallowing, top_n=5, max_seconds=0.3, trace_memory=False)
    assert report.timed_out


def test_next_profile_after_a_stopped_one_runs_normally() -> None:
    # Given a run that was stopped by its deadline
    profile_call(_spin, top_n=5, max_seconds=0.2, trace_memory=False)
    # When the next ones run, short and long
    quick = profile_call(_hot, top_n=5, max_seconds=10)
    again = profile_call(_keep_big, top_n=5, max_seconds=10)
    # Then nothing is left pending from the first (no stray exception, no hang)
    assert quick.ok and again.ok and not quick.timed_out


def test_pstats_file_opens_with_standard_tools(tmp_path: Path) -> None:
    target = tmp_path / "hot.pstats"
    report = profile_call(_hot, top_n=5, max_seconds=10, pstats_path=target)

    assert report.pstats_path == str(target)
    stats = pstats.Stats(str(target))
    assert any(func == "_burn" for (_, _, func) in stats.stats)  # type: ignore[attr-defined]
    assert stats.total_calls > 0  # type: ignore[attr-defined]
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_pstats_written_for_a_failing_run_too(tmp_path: Path) -> None:
    target = tmp_path / "fails.pstats"
    profile_call(_fails, top_n=5, max_seconds=10, pstats_path=target)
    assert pstats.Stats(str(target)).total_calls > 0  # type: ignore[attr-defined]


def test_to_dict_is_json_safe() -> None:
    data = profile_call(_fails, top_n=3, max_seconds=10).to_dict()

    restored = json.loads(json.dumps(data))
    assert restored["ok"] is False
    assert restored["exception"]["type"] == "ValueError"
    assert restored["by_tottime"][0]["location"].endswith(")")
    assert "current_sites" in restored["memory"]


def test_without_memory_tracing_there_is_no_memory_section() -> None:
    report = profile_call(_hot, top_n=3, max_seconds=10, trace_memory=False)
    assert report.memory is None and report.ok


def test_tracemalloc_left_as_found() -> None:
    assert not tracemalloc.is_tracing()
    profile_call(_keep_big, top_n=3, max_seconds=10)
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        report = profile_call(_keep_big, top_n=3, max_seconds=10)
        assert tracemalloc.is_tracing()
        assert report.memory is not None and report.memory.current_sites[0].size_bytes >= 16 * MiB
    finally:
        tracemalloc.stop()


def test_interrupt_propagates_and_leaves_tracemalloc_off() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_call(interrupted, top_n=3, max_seconds=5)
    assert not tracemalloc.is_tracing()


def test_memory_traced_profiles_in_two_threads_take_turns() -> None:
    def keep_big_slowly() -> bytearray:
        kept = _keep_big()
        time.sleep(0.3)  # long enough for the two calls to overlap, were they not serialised
        return kept

    reports: list = []
    threads = [
        threading.Thread(
            target=lambda: reports.append(profile_call(keep_big_slowly, top_n=3, max_seconds=10))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(reports) == 2 and all(r.ok for r in reports)
    assert all(r.memory.current_sites[0].size_bytes >= 16 * MiB for r in reports)
    assert all(r.memory.retained_bytes < 20 * MiB for r in reports)  # not the other's 16 MiB too
    assert not tracemalloc.is_tracing()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_seconds": 11, "top_n": 5}, "profiling.max_seconds=10.0"),
        ({"max_seconds": 1, "top_n": 21}, "profiling.top_n=20"),
        ({"max_seconds": 0, "top_n": 5}, "max_seconds must be greater than 0"),
        ({"max_seconds": 1, "top_n": -1}, "top_n must be greater than 0"),
        ({"max_seconds": "1", "top_n": 5}, "max_seconds must be a number"),
    ],
)
def test_requests_over_the_bounds_are_refused_by_name(kwargs: dict, named: str) -> None:
    calls = []
    with pytest.raises(InvalidInput, match=named.replace(".", r"\.")):
        profile_call(lambda: calls.append(1), limits=LIMITS, **kwargs)
    assert calls == []  # refused before running


def test_pstats_path_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        profile_call(_hot, top_n=3, max_seconds=5, pstats_path=tmp_path / "no" / "x.pstats")


def test_limits_built_from_the_profiling_settings() -> None:
    settings = ProfilingSettings()
    limits = Limits.from_mapping(dataclasses.asdict(settings))
    assert limits.max_seconds == settings.max_seconds and limits.top_n == settings.top_n
    with pytest.raises(InvalidInput, match="profiling.max_iterations"):
        limits.check_iterations(settings.max_iterations + 1)


def test_registry_gives_registered_callables_and_refuses_others() -> None:
    registry = Registry("profilable task")

    @registry.register("lewis.test.hot")
    def hot() -> int:
        return 1

    registry.register("lewis.test.burn", _burn)
    assert registry.get("lewis.test.hot") is hot
    assert registry.names() == ("lewis.test.burn", "lewis.test.hot")
    assert "lewis.test.burn" in registry and len(registry) == 2
    with pytest.raises(
        InvalidInput, match=r"unknown profilable task 'os\.system'.*lewis\.test\.burn"
    ):
        registry.get("os.system")
    with pytest.raises(InvalidInput, match="unknown"):
        registry.get(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "1abc", "os.system; rm -rf /", "a b", "x" * 200])
def test_registry_refuses_bad_names(bad: str) -> None:
    with pytest.raises(InvalidInput, match="not allowed"):
        Registry().register(bad, _burn)


def test_registry_refuses_a_second_callable_under_one_name() -> None:
    registry = Registry()
    registry.register("lewis.test.burn", _burn)
    registry.register("lewis.test.burn", _burn)  # the same one again: fine (module re-import)
    with pytest.raises(InvalidInput, match="already registered"):
        registry.register("lewis.test.burn", _hot)
