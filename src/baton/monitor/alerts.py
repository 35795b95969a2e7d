"""Drift alerts: a watch that raises them, and a sender that posts them to a webhook.

The two run as separate tasks joined by a bounded queue, so a slow or failing webhook
never delays a drift check: :class:`DriftWatch` checks every version that takes traffic
(live, canary and shadow) each interval, records and logs each newly drifting feature, and
hands the alert to :class:`AlertSender` without waiting. The sender posts alerts one by
one, retrying a failed post with jittered exponential backoff; when the queue is full the
oldest alert is dropped and the drop counted and logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from baton.backoff import Backoff
from baton.monitor.drift import DriftMonitor

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("baton.alerts")


class Watched(Protocol):
    """A served version whose inputs are watched for drift (a ``ModelService``)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def drift(self) -> DriftMonitor | None: ...

    @property
    def drift_alerts(self) -> collections.deque[dict[str, Any]]: ...


class AlertSender:
    """Post alerts to ``url``, in order, each up to ``attempts`` times.

    ``submit`` never blocks; ``run`` is the sending task. A post that fails (a network
    error, a timeout after ``timeout`` seconds, a status >= 400) is retried after a
    jittered delay from ``first`` doubling to ``cap`` seconds.
    """

    def __init__(self, url: str, *, maxsize: int = 1000, attempts: int = 4,
                 timeout: float = 5.0, first: float = 0.5, cap: float = 30.0) -> None:
        self.url = url
        self.attempts = attempts
        self.timeout = timeout
        self.first, self.cap = first, cap
        self.sent = self.failed = self.dropped = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxsize)
        self._wake = asyncio.Event()

    def submit(self, alert: dict[str, Any]) -> None:
        """Queue ``alert``; when the queue is full the oldest alert makes room."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            log.warning("drift webhook %s is behind: dropped the oldest queued alert "
                        "(%d dropped so far)", self.url, self.dropped)
        self._queue.append(alert)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Send queued alerts until cancelled."""
        import httpx  # off the import path of the engine: only a webhook needs it

        async with httpx.AsyncClient(timeout=self.timeout) as client:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                await self._deliver(client, self._queue.popleft())

    async def _deliver(self, client: httpx.AsyncClient, alert: dict[str, Any]) -> bool:
        import httpx

        body = orjson.dumps(alert)
        backoff = Backoff(self.first, self.cap)
        for attempt in range(1, self.attempts + 1):
            try:
                resp = await client.post(self.url, content=body,
                                         headers={"content-type": "application/json"})
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("drift webhook %s failed (attempt %d of %d): %s", self.url,
                            attempt, self.attempts, str(exc) or type(exc).__name__)
                if attempt < self.attempts:
                    await backoff.sleep()
                continue
            self.sent += 1
            return True
        self.failed += 1
        return False


class DriftWatch:
    """Every ``interval`` seconds, check the drift of each version ``versions()`` lists."""

    def __init__(self, versions: Callable[[], Iterable[Watched]], interval: float,
                 sender: AlertSender | None = None) -> None:
        self.versions = versions
        self.interval = interval
        self.sender = sender

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> list[dict[str, Any]]:
        """One pass: the alerts raised for features that started drifting since the last."""
        raised = []
        for svc in list(self.versions()):
            if svc.drift is not None:
                raised.extend(self._check(svc, svc.drift))
        return raised

    def _check(self, svc: Watched, drift: DriftMonitor) -> list[dict[str, Any]]:
        result = drift.compute(max_age=0)
        alerts = []
        for feature in drift.newly_drifting(result):
            alert = {"model": svc.name, "version": svc.version, "feature": feature,
                     "threshold": drift.threshold, "time": time.time(),
                     **{k: v for k, v in result[feature].items() if k != "drifting"}}
            svc.drift_alerts.append(alert)
            log.warning("%s@%s: input feature %r is drifting (PSI %.3f > %.3f)", svc.name,
                        svc.version, feature, result[feature]["psi"], drift.threshold)
            if self.sender is not None:
                self.sender.submit(alert)
            alerts.append(alert)
        return alerts
