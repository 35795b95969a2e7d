"""One exponential backoff with jitter, shared by every retry loop in Baton.

Stream reconnects, worker restarts and prediction exports all wait this way. The jitter
matters for a fleet: engines that lost the same broker at the same moment would otherwise
all come back at the same moment too, and knock it over again in lock-step.
"""
from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with jitter: each delay is drawn in [base*(1-jitter), base],
    base doubling from `first` up to `cap`."""

    def __init__(self, first: float, cap: float, *, jitter: float = 0.5) -> None:
        if first <= 0:
            raise ValueError(f"first must be > 0, not {first}")
        if cap < first:
            raise ValueError(f"cap ({cap}) must be >= first ({first})")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], not {jitter}")
        self.first, self.cap, self.jitter = first, cap, jitter
        self._base = first

    @property
    def base(self) -> float:
        """The upper bound of the next delay."""
        return self._base

    def next(self) -> float:
        """The delay to wait now; then the base doubles (<= cap)."""
        base = self._base
        self._base = min(base * 2, self.cap)
        return base * (1 - self.jitter * random.random())

    def reset(self) -> None:
        """Start again from `first` (after a success)."""
        self._base = self.first

    async def sleep(self, stop: asyncio.Event | None = None) -> bool:
        """Wait the next delay; True if `stop` was set first (then return at once)."""
        delay = self.next()
        if stop is None:
            await asyncio.sleep(delay)
            return False
        if stop.is_set():
            return True
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return False
        return True
