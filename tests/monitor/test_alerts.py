"""Drift alerts: the watch records them without waiting for the webhook; the sender posts
them with retries, and drops the oldest when it falls behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from baton.batch import Batch
from baton.contract.spec import FieldSpec
from baton.monitor.alerts import AlertSender, DriftWatch
from baton.monitor.drift import DriftMonitor, reference_profile
from tests.monitor.webhook import Webhook, running, until

REFERENCE = reference_profile(pd.DataFrame({"x": np.random.default_rng(3).normal(0, 1, 2000)}),
                              [FieldSpec("x", "float")])


@dataclass
class Watched:
    """A served version as the watch sees it (what a ModelService offers)."""

    name: str
    version: str = "1.0.0"
    drift: DriftMonitor = field(default_factory=lambda: DriftMonitor(REFERENCE, 0.2))
    drift_alerts: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=100))

    def shift(self) -> None:
        """Inputs far from the reference: ``x`` drifts at the next check."""
        self.drift.observe(Batch({"x": np.random.default_rng(4).normal(5, 1, 400)}, 400))


@contextlib.asynccontextmanager
async def running_tasks(*jobs: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``jobs`` (the sender's, the watch's loop) as tasks for the block, then cancel
    them."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_hanging_webhook_does_not_hold_back_another_models_alert() -> None:
    a, b = Watched("a"), Watched("b")

    async def scenario(hook: Webhook) -> None:
        sender = AlertSender(hook.url, timeout=3600)  # a post may hang for an hour
        watch = DriftWatch(lambda: [a, b], 0.01, sender)
        async with running_tasks(sender.run(), watch.run()):
            a.shift()
            await until(hook.entered.is_set, "a's alert posted")
            assert not hook.release.is_set()  # ... and the webhook holds it
            b.shift()
            await until(lambda: len(b.drift_alerts) == 1, "b's alert recorded")
            assert (b.drift_alerts[0]["model"], b.drift_alerts[0]["feature"]) == ("b", "x")
            assert hook.received == [] and sender.queued == 1  # b's waits behind a's
            hook.release.set()
            # the sender's own count: the webhook records b's post before the sender reads
            # its answer, and leaving then would cancel a request in flight (its socket
            # collected after the loop closed: an unraisable ResourceWarning in CI)
            await until(lambda: sender.sent == 2, "both alerts delivered")
            assert [r["model"] for r in hook.received] == ["a", "b"]

    with running(Webhook(hold=True)) as hook:
        asyncio.run(scenario(hook))


def test_a_failing_webhook_is_retried_until_it_takes_the_alert() -> None:
    async def scenario(hook: Webhook) -> AlertSender:
        sender = AlertSender(hook.url, attempts=4, first=0.01, cap=0.05)
        async with running_tasks(sender.run()):
            sender.submit({"model": "a", "feature": "x"})
            await until(lambda: sender.sent == 1, "the alert delivered")
        return sender

    with running(Webhook(fail_first=2)) as hook:
        sender = asyncio.run(scenario(hook))
    assert hook.attempts == [{"model": "a", "feature": "x"}] * 3  # two 500s, then taken
    assert (sender.sent, sender.failed) == (1, 0)


def test_an_alert_is_given_up_after_its_attempts() -> None:
    async def scenario(hook: Webhook) -> AlertSender:
        sender = AlertSender(hook.url, attempts=2, first=0.01, cap=0.05)
        async with running_tasks(sender.run()):
            sender.submit({"model": "a"})
            sender.submit({"model": "b"})
            # the sender's own count: the webhook records the post before the sender reads
            # its answer, so waiting on the webhook alone races the count checked below
            await until(lambda: sender.sent == 1, "the second alert delivered")
        return sender

    with running(Webhook(fail_first=2)) as hook:
        sender = asyncio.run(scenario(hook))
    assert [a["model"] for a in hook.attempts] == ["a", "a", "b"]
    assert hook.received == [{"model": "b"}] and (sender.sent, sender.failed) == (1, 1)


def test_a_full_queue_drops_the_oldest_alert_and_counts_it() -> None:
    async def scenario(hook: Webhook) -> AlertSender:
        sender = AlertSender(hook.url, maxsize=2)
        for n in range(3):
            sender.submit({"n": n})
        assert (sender.queued, sender.dropped) == (2, 1)
        async with running_tasks(sender.run()):
            await until(lambda: sender.sent == 2, "the queued alerts delivered")
        return sender

    with running(Webhook()) as hook:
        asyncio.run(scenario(hook))
    assert hook.received == [{"n": 1}, {"n": 2}]
