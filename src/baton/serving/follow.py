"""Serve a registry stage: load what is promoted, warm it up, switch traffic, drop the old.

The follower polls the registry. Every version it could serve passes the serve-time gate
first (:mod:`baton.serving.gate`): a decision the registry signed, for exactly that digest,
in a stage the engine's policy allows. When the signed live version of a model changes (a
promotion or a rollback), the follower pulls the new archive (verified against the signed
digest), extracts it (verified again), builds or reuses its environment, starts its workers,
scores the bundle's samples as a warm-up, and only then swaps it in (see
``Engine.replace``). A version that fails any step is never served; the live one keeps
serving and the failure is visible in ``/v1/models``.

What the registry's database says is only a hint: a version leaves traffic when a signed
decision takes it out of the policy, never because a row changed. A row whose decision is
missing, forged, copied from another version or older than one already followed is
*refused*: logged, counted (``baton_registry_refusals_total``) and listed in ``/v1/models``
under ``source.refused``, while the last verified version keeps serving. Canary and shadow
candidates are checked again at every step and withdrawn as soon as they stop qualifying.

Without following (``follow=False``: the engine serves registry refs it was given), the same
steps keep checking the versions it serves and never pick up new ones.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from baton.bundle.archive import ArchiveLimits
from baton.errors import BatonError, NotApproved, StageNotAllowed, UntrustedDecision
from baton.serving.gate import CANDIDATE, LIVE, ServeGate
from baton.serving.opening import ensure_environment, open_local
from baton.serving.service import Engine, ModelService
from baton.serving.versions import CANARY, SHADOW
from baton.settings import Settings
from baton.trust import Decision

log = logging.getLogger("baton.follow")

#: Seconds before a version that failed to load is tried again.
RETRY_FAILED_AFTER = 60.0
#: What the gate raises when a version may not be served.
REFUSALS = (StageNotAllowed, NotApproved, UntrustedDecision)


class RegistrySource(Protocol):
    """What an engine needs from a registry (``baton.registry.client.RegistryClient``).
    Each version description carries the registry's signed ``decision``."""

    def list(self, name: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        ...

    def show(self, ref: str) -> dict[str, Any]:
        ...

    def pull(self, ref: str, dest: Path, *,
             limits: ArchiveLimits | None = None) -> tuple[Path, str]:
        ...


def prepare_from_registry(client: RegistrySource, ref: str, settings: Settings,
                          gate: ServeGate, role: str = LIVE) -> ModelService:
    """Pull ``ref`` if a signed decision lets ``role`` serve it, verify it, and build its
    service (not started)."""
    decision = gate.verify(client.show(ref), role)
    svc = _service(client, decision, settings)
    gate.accept(decision, role)
    return svc


def _service(client: RegistrySource, decision: Decision, settings: Settings) -> ModelService:
    """The service for exactly the signed digest: pulled, verified, environment ready. The
    registry's check report of it (unsigned: it only tunes the default timeout, which has a
    floor) derives the timeout when nothing sets one."""
    limits = ArchiveLimits.from_settings(settings)  # an oversized download stops early too
    archive, digest = client.pull(f"{decision.name}@{decision.digest}",
                                  settings.home / "pulls", limits=limits)
    bundle = open_local(archive, settings, expected_digest=decision.digest)
    report = client.show(f"{decision.name}@{decision.digest}").get("check_report")
    return ModelService(bundle, ensure_environment(bundle, settings), settings,
                        report if isinstance(report, dict) else None)


def choose_live(rows: list[dict[str, Any]], gate: ServeGate,
                refuse: Callable[[dict[str, Any], BatonError], None]
                ) -> dict[str, tuple[dict[str, Any], Decision]]:
    """Per model, the registry row to serve: its signed decision qualifies; in production
    the newest such decision (only one can be genuine), in staging the latest version.
    Rows refused by the gate go to ``refuse``."""
    chosen: dict[str, tuple[dict[str, Any], Decision]] = {}
    for info in rows:
        try:
            decision = gate.verify(info, LIVE)
        except REFUSALS as exc:
            refuse(info, exc)
            continue
        best = chosen.get(decision.name)
        if best is None or gate.stage == "staging" or decision.seq > best[1].seq:
            chosen[decision.name] = (info, decision)
    return chosen


def _is_missing(exc: BatonError) -> bool:
    return exc.http_status == 404


class RegistryFollower:
    def __init__(self, engine: Engine, client: RegistrySource, settings: Settings,
                 gate: ServeGate, *, interval: float = 2.0, follow: bool = True) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.gate = gate
        self.interval = interval
        self.follow = follow
        self.failed: dict[str, tuple[float, str]] = {}
        #: Versions refused, by (role, ``name@version``): live rows while the refusal
        #: holds, and withdrawn canary/shadow candidates for good.
        self.refused: dict[tuple[str, str], dict[str, Any]] = {}
        #: Refusals by (model, code), each counted when it first appears.
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self.last_error: str | None = None
        self.syncs = 0
        #: What the step under way refuses; published as ``refused`` when it ends, so a
        #: reader never sees a step half done.
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def stage(self) -> str:
        return self.gate.stage

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
                self.last_error = None
                self.engine.synced = True  # ready only once the registry has answered
            except BatonError as exc:
                self.last_error = exc.message
                log.warning("registry sync failed: %s", exc.message)
            self.syncs += 1
            await asyncio.sleep(self.interval)

    async def sync(self) -> None:
        """One step: follow what is signed into the stage, keep or drop what is served."""
        self._pending = {k: v for k, v in self.refused.items() if v["role"] != LIVE}
        done = False
        try:
            await self._step()
            done = True
        finally:
            # A step cut short (the registry stopped answering) forgets no refusal.
            self.refused = self._pending if done else {**self.refused, **self._pending}

    async def _step(self) -> None:
        rows = await asyncio.to_thread(self.client.list, None, self.stage) \
            if self.follow else []
        chosen = self._choose(rows)
        digests = {d.digest for _, d in chosen.values()}
        self.failed = {d: f for d, f in self.failed.items() if d in digests}
        for name, (_, decision) in chosen.items():
            await self._follow(name, decision)
        for name in [n for n in self.engine.models if n not in chosen]:
            await self._check_live(name, rows)
        await self._check_candidates()

    def _choose(self, rows: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any],
                                                                     Decision]]:
        return choose_live(rows, self.gate, lambda info, exc: self._refuse(info, LIVE, exc))

    async def _follow(self, name: str, decision: Decision) -> None:
        live = self.engine.models.get(name)
        if live is not None and live.bundle.digest == decision.digest:
            self.gate.accept(decision, LIVE)
            return
        failed = self.failed.get(decision.digest)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_AFTER:
            return
        await self.load(decision)

    async def load(self, decision: Decision) -> None:
        started = time.perf_counter()
        svc: ModelService | None = None
        try:
            svc = await asyncio.to_thread(_service, self.client, decision, self.settings)
            await svc.pool.start()
            await svc.warm_up()
            # Pulling and building can take minutes: the decision must still hold now.
            info = await asyncio.to_thread(self.client.show, f"{decision.name}@{decision.digest}")
            decision = self.gate.verify(info, LIVE, decision.digest)
        except REFUSALS as exc:
            self._refuse({"name": decision.name, "version": decision.version,
                          "digest": decision.digest}, LIVE, exc)
            if svc is not None:
                await svc.close(5.0)
            return
        except BatonError as exc:
            self.failed[decision.digest] = (time.monotonic(), f"{exc.code}: {exc.message}")
            log.error("not serving %s (%s): [%s] %s", decision.ref, decision.digest, exc.code,
                      exc.message)
            if svc is not None:
                await svc.close(5.0)
            return
        self.gate.accept(decision, LIVE)
        old = await self.engine.replace(svc)
        log.info("%s@%s now serves (%s, signed decision #%d) in %.2fs%s", svc.name,
                 svc.version, svc.bundle.digest, decision.seq, time.perf_counter() - started,
                 f", replacing {old.version}" if old is not None else "")

    async def _check_live(self, name: str, rows: list[dict[str, Any]]) -> None:
        """A served model with no qualifying row: unload it only if its own signed decision
        takes it out of the policy; anything else is an unsigned change, refused."""
        live = self.engine.models[name]
        digest = live.bundle.digest
        info = next((r for r in rows if r.get("name") == name and r.get("digest") == digest),
                    None)
        try:
            if info is None:
                info = await asyncio.to_thread(self.client.show, f"{name}@{digest}")
            decision = self.gate.signed(info)
            self.gate.check(decision, LIVE, digest)
        except (StageNotAllowed, NotApproved) as exc:
            await self._leave(name, decision, exc)  # signed and current: the registry's word
            return
        except UntrustedDecision as exc:
            self._refuse(info or {"name": name, "version": live.version}, LIVE, exc)
            return
        except BatonError as exc:
            if not _is_missing(exc):
                raise
            self._refuse({"name": name, "version": live.version, "digest": digest}, LIVE, exc,
                         f"{name}@{live.version} is gone from the registry without a signed "
                         "decision: still serving it")
            return
        if self.follow:
            self._refuse(info, LIVE, UntrustedDecision(
                f"the registry's database lists {name}@{live.version} as "
                f"{info.get('stage')}, but its latest signed decision (#{decision.seq}) puts "
                f"it in {decision.stage}: still serving it", code="DECISION_MISMATCH"))
        else:
            self.gate.accept(decision, LIVE)

    async def _leave(self, name: str, decision: Decision, exc: BatonError) -> None:
        self.gate.accept(decision, LIVE)
        log.info("%s leaves traffic by signed decision #%d: %s", decision.ref, decision.seq,
                 exc.message)
        await self.engine.remove(name)

    async def _check_candidates(self) -> None:
        for role, cand, _ in self.engine.versions.entries():
            if role not in (CANARY, SHADOW):
                continue
            name = cand.name
            info: dict[str, Any] = {"name": name, "version": cand.version,
                                    "digest": cand.bundle.digest}
            try:
                info = await asyncio.to_thread(self.client.show,
                                               f"{name}@{cand.bundle.digest}")
                decision = self.gate.verify(info, CANDIDATE, cand.bundle.digest)
            except REFUSALS as exc:
                await self._withdraw(role, name, info, exc)
                continue
            except BatonError as exc:
                if not _is_missing(exc):
                    raise
                await self._withdraw(role, name, info, exc)
                continue
            self.gate.accept(decision, CANDIDATE)

    async def _withdraw(self, role: str, name: str, info: dict[str, Any],
                        exc: BatonError) -> None:
        """Take a canary or shadow candidate out of traffic for good."""
        versions = self.engine.versions
        cand: ModelService | None
        if role == CANARY:
            # A request already routed to the candidate is answered by the live version.
            cand = versions.withdraw_canary(name)
        else:
            shadow = versions.withdraw_shadow(name)
            if shadow is not None:
                await shadow.drain()
            cand = shadow.candidate if shadow is not None else None
        self._refuse(info, role, exc, f"{exc.message}; {role} withdrawn")
        if cand is not None:
            await cand.close(self.settings.drain_timeout)

    def _refuse(self, info: dict[str, Any], role: str, exc: BatonError,
                reason: str | None = None) -> None:
        """Record a refusal; log and count it when it is new."""
        name, version = str(info.get("name", "")), str(info.get("version", ""))
        ref = f"{name}@{version}"
        entry = {"ref": ref, "digest": info.get("digest"), "role": role, "code": exc.code,
                 "reason": reason or exc.message}
        before = self.refused.get((role, ref))
        self._pending[(role, ref)] = entry
        if before is not None and (before["code"], before["reason"]) == (entry["code"],
                                                                         entry["reason"]):
            entry["since"] = before["since"]
            return
        entry["since"] = time.time()
        self.refusals[(name, exc.code)] += 1
        level = logging.ERROR if isinstance(exc, UntrustedDecision) else logging.WARNING
        log.log(level, "refused %s (%s) [%s]: %s", ref, role, exc.code, entry["reason"])

    def describe(self) -> dict[str, Any]:
        return {"stage": self.stage, "follow": self.follow, "key": self.gate.key.text,
                "syncs": self.syncs, "last_error": self.last_error,
                "failed": {d: reason for d, (_, reason) in self.failed.items()},
                "refused": list(self.refused.values())}
