"""The version table: which version of each model takes which traffic.

One table per engine holds, per model name, the live version, an optional canary (a
weighted share of the unversioned requests) and an optional shadow (a mirror of the live
traffic). Routing (:meth:`VersionTable.get`, :meth:`VersionTable.lookup`), switching a
live version, adding and withdrawing candidates all go through it, and it is the one list
of served versions that monitoring, stats and shutdown read (:meth:`VersionTable.entries`,
:meth:`VersionTable.services`). The table only rearranges references: starting, warming
up and closing services is the engine's job, so every method here is synchronous.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from baton.errors import BatonError, ModelNotFound
from baton.serving.traffic import Canary, Shadow

if TYPE_CHECKING:
    from baton.serving.model import ModelService

LIVE, CANARY, SHADOW = "live", "canary", "shadow"


class VersionEntry(NamedTuple):
    """One version taking traffic: its ``role`` (live, canary or shadow), the service, and
    the canary split or shadow comparison it takes part in, if any."""

    role: str
    service: ModelService
    traffic: dict[str, Any] | None


class Removed(NamedTuple):
    """What :meth:`VersionTable.remove` took out of traffic, for the caller to close."""

    live: ModelService | None
    canary: ModelService | None
    shadow: Shadow | None

    def services(self) -> list[ModelService]:
        return [s for s in (self.live, self.canary,
                            self.shadow.candidate if self.shadow else None) if s is not None]


class VersionTable:
    """Live, canary and shadow versions by model name."""

    def __init__(self, services: Iterable[ModelService] = ()) -> None:
        self._live: dict[str, ModelService] = {}
        #: Canary splits and shadow mirrors by model name; they survive version switches.
        self._canaries: dict[str, Canary] = {}
        self._shadows: dict[str, Shadow] = {}
        services = list(services)
        self._live.update((s.name, s) for s in services)
        if len(self._live) != len(services):
            names = [s.name for s in services]
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise BatonError(f"two bundles share the name {dupes[0]!r}", code="DUPLICATE_MODEL")
        self.live: Mapping[str, ModelService] = MappingProxyType(self._live)
        self.canaries: Mapping[str, Canary] = MappingProxyType(self._canaries)
        self.shadows: Mapping[str, Shadow] = MappingProxyType(self._shadows)

    # -- routing ----------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ModelService:
        """The version that answers a request: a canary split applies to unversioned ones."""
        canary = self._canaries.get(name)
        if version is None and canary is not None:
            live = self._live.get(name)
            if live is not None:
                return canary.choose(live)
        return self.lookup(name, version)

    def lookup(self, name: str, version: str | None = None) -> ModelService:
        """The live version of ``name``, or exactly ``version`` (live or canary candidate)."""
        svc = self._live.get(name)
        canary = self._canaries.get(name)
        if svc is not None and canary is not None and version == canary.candidate.version:
            return canary.candidate
        if svc is None or (version is not None and version != svc.version):
            what = f"{name} version {version}" if version else name
            serving = ", ".join(f"{s.name}@{s.version}" for s in self._live.values())
            raise ModelNotFound(f"no model named {what}; serving: {serving or 'nothing'}",
                                details={"model": name, "version": version})
        return svc

    # -- changes ----------------------------------------------------------------------

    def set_live(self, new: ModelService) -> ModelService | None:
        """Make ``new`` the live version of its model; the old one (returned) hands the
        requests that reach it while it closes to ``new``. A shadow keeps mirroring."""
        old = self._live.get(new.name)
        new.shadow = self._shadows.get(new.name)
        self._live[new.name] = new
        if old is not None:
            old.successor = new
        return old

    def add_canary(self, candidate: ModelService, weight: float) -> Canary:
        """Send ``weight`` (0..1) of ``candidate``'s model's unversioned requests to it."""
        canary = Canary(candidate, weight)
        self._canaries[candidate.name] = canary
        return canary

    def add_shadow(self, candidate: ModelService) -> Shadow:
        """Mirror the live traffic of ``candidate``'s model to it."""
        shadow = Shadow(candidate)
        self._shadows[candidate.name] = shadow
        live = self._live.get(candidate.name)
        if live is not None:
            live.shadow = shadow
        return shadow

    def withdraw_canary(self, name: str) -> ModelService | None:
        """Take ``name``'s canary out of traffic; a request already routed to the candidate
        is answered by the live version. Returns the candidate, to be closed."""
        canary = self._canaries.pop(name, None)
        if canary is None:
            return None
        canary.candidate.successor = self._live.get(name)
        return canary.candidate

    def withdraw_shadow(self, name: str) -> Shadow | None:
        """Stop mirroring ``name``'s traffic; returns the shadow, to be drained and closed."""
        shadow = self._shadows.pop(name, None)
        live = self._live.get(name)
        if shadow is not None and live is not None and live.shadow is shadow:
            live.shadow = None
        return shadow

    def remove(self, name: str) -> Removed:
        """Take every version of ``name`` out of traffic: live, canary and shadow."""
        shadow = self.withdraw_shadow(name)
        canary = self.withdraw_canary(name)
        if canary is not None:
            canary.successor = None  # nothing answers for a model that is gone
        return Removed(self._live.pop(name, None), canary, shadow)

    # -- reading ----------------------------------------------------------------------

    def entries(self) -> list[VersionEntry]:
        """Every version taking traffic: per model the live one, then its canary and shadow
        candidates; a candidate whose model has no live version yet is still listed."""
        out = []
        for name in dict.fromkeys([*self._live, *self._canaries, *self._shadows]):
            live = self._live.get(name)
            canary, shadow = self._canaries.get(name), self._shadows.get(name)
            split = canary.describe() if canary is not None else None
            mirror = shadow.describe() if shadow is not None else None
            if live is not None:
                out.append(VersionEntry(LIVE, live, split or mirror))
            if canary is not None:
                out.append(VersionEntry(CANARY, canary.candidate, split))
            if shadow is not None:
                out.append(VersionEntry(SHADOW, shadow.candidate, mirror))
        return out

    def services(self) -> list[ModelService]:
        """Every version taking traffic (live, canary and shadow candidates)."""
        return [*self._live.values(), *(c.candidate for c in self._canaries.values()),
                *(s.candidate for s in self._shadows.values())]

    def traffic(self, name: str) -> dict[str, Any] | None:
        """The canary split, else the shadow comparison, the live version of ``name``
        takes part in."""
        canary = self._canaries.get(name)
        if canary is not None:
            return canary.describe()
        shadow = self._shadows.get(name)
        return shadow.describe() if shadow is not None else None
