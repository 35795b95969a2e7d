"""A registry stage served by a cluster: the driver follows it, the cluster rolls.

The driver polls the registry as an engine on one machine does (:mod:`baton.serving.follow`):
every version passes the serve-time gate first (a decision the registry signed, for exactly
that digest, in the stage the engine serves), the archive is pulled and verified against the
signed digest, and the decision is checked again after the pull. Only then does the model's
deployment get the new archive: Ray Serve starts the new replicas, routes to them once they
are ready and drains the old ones, so no request fails. A model leaves the cluster only by
its own signed decision; a refused or failed version leaves the one serving in place.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baton.bundle.archive import ArchiveLimits
from baton.cluster.replica import Shipment
from baton.errors import BatonError, NotApproved, StageNotAllowed
from baton.serving.follow import REFUSALS, RETRY_FAILED_AFTER, RegistrySource, choose_live
from baton.serving.gate import LIVE, ServeGate
from baton.serving.opening import open_local
from baton.settings import Settings
from baton.trust import Decision

log = logging.getLogger("baton.cluster")


class ClusterFollower:
    """What the cluster should serve, from the registry; ``apply`` rolls it out."""

    def __init__(self, client: RegistrySource, gate: ServeGate, settings: Settings,
                 apply: Callable[[dict[str, Shipment]], None]) -> None:
        self.client = client
        self.gate = gate
        self.settings = settings
        self.apply = apply
        #: The shipment each model's deployment has now.
        self.serving: dict[str, Shipment] = {}
        self.failed: dict[str, tuple[float, str]] = {}
        self.refused: dict[str, str] = {}

    def step(self) -> bool:
        """One poll; whether the cluster was changed."""
        rows = self.client.list(None, self.gate.stage)
        chosen = choose_live(rows, self.gate, self._refuse)
        wanted = dict(self.serving)
        for name, (_, decision) in chosen.items():
            current = self.serving.get(name)
            if current is not None and current.digest == decision.digest:
                self.gate.accept(decision, LIVE)
                continue
            shipment = self._pull(decision)
            if shipment is not None:
                wanted[name] = shipment
        for name in [n for n in self.serving if n not in chosen]:
            if self._leaves(name):
                del wanted[name]
        if wanted == self.serving:
            return False
        started = time.perf_counter()
        self.apply(wanted)
        for name, s in wanted.items():
            if self.serving.get(name) != s:
                log.info("%s@%s now serves on the cluster (%s) in %.2fs", name, s.version,
                         s.digest, time.perf_counter() - started)
        self.serving = wanted
        return True

    def _pull(self, decision: Decision) -> Shipment | None:
        """The archive of exactly the signed digest, verified; None when refused or failed
        (the version serving now, if any, goes on)."""
        failed = self.failed.get(decision.digest)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_AFTER:
            return None
        ref = f"{decision.name}@{decision.digest}"
        try:
            with tempfile.TemporaryDirectory(prefix="baton-pull-") as tmp:
                archive, _ = self.client.pull(ref, Path(tmp),
                                              limits=ArchiveLimits.from_settings(self.settings))
                open_local(archive, self.settings, expected_digest=decision.digest)
                data = archive.read_bytes()
            # Pulling can take a while: the decision must still hold now.
            decision = self.gate.verify(self.client.show(ref), LIVE, decision.digest)
        except REFUSALS as exc:
            self._refuse({"name": decision.name, "version": decision.version}, exc)
            return None
        except BatonError as exc:
            self.failed[decision.digest] = (time.monotonic(), f"{exc.code}: {exc.message}")
            log.error("not serving %s (%s): [%s] %s", decision.ref, decision.digest, exc.code,
                      exc.message)
            return None
        self.gate.accept(decision, LIVE)
        return Shipment(decision.name, decision.version, decision.digest, data)

    def _leaves(self, name: str) -> bool:
        """A served model with no qualifying row leaves only by its own signed decision."""
        digest = self.serving[name].digest
        try:
            decision = self.gate.signed(self.client.show(f"{name}@{digest}"))
            self.gate.check(decision, LIVE, digest)
        except (StageNotAllowed, NotApproved) as exc:
            log.info("%s leaves the cluster by signed decision: %s", name, exc.message)
            return True
        except BatonError as exc:
            self._refuse({"name": name, "version": self.serving[name].version}, exc)
        return False

    def _refuse(self, info: dict[str, Any], exc: BatonError) -> None:
        ref = f"{info.get('name')}@{info.get('version')}"
        if self.refused.get(ref) != exc.code:
            log.warning("refused %s [%s]: %s", ref, exc.code, exc.message)
        self.refused[ref] = exc.code
