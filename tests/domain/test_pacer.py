"""The open loop's pacer: wakes at its instants, never before, in time order, on a real loop."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from lewis_tasks.domain.pacer import Pacer


@pytest.mark.parametrize("precise", [True, False])
def test_waiters_wake_in_time_order_and_never_early(precise: bool) -> None:
    async def main() -> list[tuple[int, float, float]]:
        pacer = Pacer(precise=precise)
        woke: list[tuple[int, float, float]] = []
        base = time.perf_counter() + 0.02

        async def wait(k: int, when: float) -> None:
            await pacer.until(when)
            woke.append((k, when, time.perf_counter()))

        # given out of order, 0.3 ms apart: sub-millisecond gaps the loop's timers round away
        instants = [base + k * 0.0003 for k in range(40)]
        order = list(range(40))[::-1]
        try:
            await asyncio.gather(*(wait(k, instants[k]) for k in order))
        finally:
            pacer.close()
        return woke

    woke = asyncio.run(main())
    assert sorted(k for k, _, _ in woke) == list(range(40))
    assert all(now >= when for _, when, now in woke)  # never before its instant
    if precise:  # each woke in its own turn: the order of the instants, not of the calls
        assert [k for k, _, _ in woke] == list(range(40))


def test_the_pacer_is_precise_on_linux() -> None:
    async def main() -> bool:
        pacer = Pacer()
        try:
            return pacer.precise
        finally:
            pacer.close()

    assert asyncio.run(main()) is sys.platform.startswith("linux")


def test_a_past_instant_returns_at_once_and_close_cancels_waiters() -> None:
    async def main() -> bool:
        pacer = Pacer()
        await pacer.until(time.perf_counter() - 1)  # no wait at all
        far = asyncio.ensure_future(pacer.until(time.perf_counter() + 3600))
        await asyncio.sleep(0.01)
        pacer.close()  # the run is over: a waiter must not go on and send
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(far, 1)
        return far.cancelled()

    assert asyncio.run(main())


def test_a_cancelled_waiter_does_not_hold_up_the_next() -> None:
    async def main() -> bool:
        pacer = Pacer()
        try:
            now = time.perf_counter()
            first = asyncio.ensure_future(pacer.until(now + 0.02))
            second = asyncio.ensure_future(pacer.until(now + 0.04))
            await asyncio.sleep(0)
            first.cancel()
            await asyncio.wait_for(second, 1)
            return second.done() and not second.cancelled()
        finally:
            pacer.close()

    assert asyncio.run(main())
