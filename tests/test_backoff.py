"""The one jittered backoff every retry loop shares."""
from __future__ import annotations

import asyncio

import pytest

from baton.backoff import Backoff


def test_delays_stay_within_jitter_bounds_and_double_to_the_cap() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.5)
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for base in bases:
        delay = backoff.next()
        assert base * 0.5 <= delay <= base


def test_without_jitter_the_delays_are_exact() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_reset_starts_again_from_first() -> None:
    backoff = Backoff(1.0, 60.0, jitter=0.0)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.next() == 1.0
    assert backoff.next() == 2.0


def test_jitter_spreads_the_delays() -> None:
    """A fleet that lost the same broker must not come back in lock-step."""
    delays = {Backoff(1.0, 1.0).next() for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= 0.5 and max(delays) <= 1.0
    assert max(delays) - min(delays) > 0.1


@pytest.mark.parametrize("first, cap, jitter", [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.5)])
def test_nonsense_parameters_are_refused(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(first, cap, jitter=jitter)


def test_sleep_returns_early_when_stop_is_set() -> None:
    async def run() -> tuple[bool, bool]:
        stop = asyncio.Event()
        backoff = Backoff(3600.0, 3600.0)
        waiting = asyncio.create_task(backoff.sleep(stop))
        await asyncio.sleep(0)
        stop.set()
        # An hour-long delay that returned means stop cut it short.
        early = await asyncio.wait_for(waiting, 60)
        again = await asyncio.wait_for(backoff.sleep(stop), 60)  # already set: no wait at all
        return early, again

    assert asyncio.run(run()) == (True, True)


def test_sleep_without_stop_waits_and_reports_false() -> None:
    backoff = Backoff(0.001, 0.001)
    assert asyncio.run(backoff.sleep()) is False
    stop = asyncio.Event()
    assert asyncio.run(backoff.sleep(stop)) is False
