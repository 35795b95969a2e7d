"""The serve-time gate: a registry-following engine serves a version only on the strength of
a decision the registry signed, checked against the engine's own stage policy.

The registry's database says which versions are where; the gate believes none of it. For
every version that can receive or see traffic it takes the ``decision`` the registry attached
to the version's description, verifies the signature with the pinned public key
(:func:`baton.trust.verify_decision`) and checks (:func:`baton.trust.check_decision`) that it
covers exactly the digest to be served, in a stage the policy allows, with no rejection and,
on a production engine, the approvals the registry's rule asks for:

=========== ========================== ===========================================
engine      live version               canary / shadow candidate
=========== ========================== ===========================================
production  production, approved       staging or production, approved
staging     staging                    staging or production
=========== ========================== ===========================================

Replays (an older genuine decision put back into the database) are refused two ways: per
version, a decision older than one already seen for that version; and on a production engine,
a live decision older than the newest live decision accepted for the model
(:class:`baton.trust.DecisionLedger`: one version of a model is in production at a time, so
its live decisions only move forward). Staging may hold several versions of a model at once,
so a staging engine keeps only the per-version check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.errors import (
    BatonError,
    RegistryKeyRequired,
    SettingsError,
    StageNotAllowed,
    UntrustedDecision,
)
from baton.settings import Settings
from baton.trust import (
    Decision,
    DecisionLedger,
    PublicKey,
    check_decision,
    parse_public_key,
    verify_decision,
)

#: The stages an engine may serve (``RegistrySpec.stage``, ``baton serve --stage``).
ENGINE_STAGES = ("staging", "production")
#: What a version is to the engine: the one that answers, or a canary/shadow candidate.
LIVE, CANDIDATE = "live", "candidate"
LOCAL_REFUSED = "a registry-following engine serves only versions the registry signed"


def check_stage(stage: str) -> str:
    if stage not in ENGINE_STAGES:
        raise SettingsError(f"an engine serves the staging or production stage, got "
                            f"{stage!r}", details={"field": "stage", "value": stage,
                                                   "allowed": list(ENGINE_STAGES)})
    return stage


def pinned_key(url: str, settings: Settings) -> PublicKey:
    """The registry key to pin: ``settings.registry_key``, else the one ``baton login``
    saved for ``url``; refuse to go on without one."""
    from baton.profile import registry_key

    text = registry_key(url, settings.registry_key)
    if not text:
        raise RegistryKeyRequired(
            f"serving from the registry at {url} needs its public key, to serve only what it "
            "signed: pass --registry-key ed25519:... (or set BATON_REGISTRY_KEY); the "
            "registry's operator prints it with 'baton registry key' on the registry host, "
            "and 'baton login' saves it", details={"registry": url})
    return parse_public_key(text)


def local_ref(ref: str) -> bool:
    """Whether ``ref`` names a bundle folder or archive rather than a registry version."""
    return Path(ref).exists() or "/" in ref or ref.endswith(".baton")


def refuse_local(ref: str, role: str) -> StageNotAllowed:
    return StageNotAllowed(f"{role} {ref} is a local bundle: {LOCAL_REFUSED} (push it, "
                           "and name it NAME@VERSION)", details={"ref": ref, "role": role})


@dataclass
class ServeGate:
    """The pinned key, the engine's stage, and the decisions it has accepted so far."""

    key: PublicKey
    stage: str
    live_ledger: DecisionLedger = field(default_factory=DecisionLedger)
    #: The newest decision seen, per ``name@version``.
    seen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_stage(self.stage)

    def stages(self, role: str) -> tuple[str, ...]:
        return (self.stage,) if role == LIVE else ENGINE_STAGES

    def verify(self, info: dict[str, Any], role: str, digest: str | None = None) -> Decision:
        """The signed decision behind the version described by ``info`` (a registry
        list/show entry) if it lets ``role`` serve ``digest`` (default: the entry's)."""
        decision = self.signed(info)
        self.check(decision, role, digest or str(info.get("digest", "")))
        return decision

    def signed(self, info: dict[str, Any]) -> Decision:
        """The decision attached to ``info``: signed by the pinned key, for this very
        version, and not older than one already seen for it (else
        :class:`UntrustedDecision`)."""
        name, version = str(info.get("name", "")), str(info.get("version", ""))
        ref = f"{name}@{version}"
        decision = verify_decision(self.key, info.get("decision"), ref=ref)
        if decision.name != name or decision.version != version:
            raise UntrustedDecision(
                f"the signed decision attached to {ref} is for {decision.ref}",
                code="DECISION_MISMATCH", details={"ref": ref, "signed": decision.ref})
        newest = self.seen.get(decision.ref, -1)
        if decision.seq < newest:
            raise UntrustedDecision(
                f"the signed decision for {decision.ref} (#{decision.seq}) is older than one "
                f"this engine already saw for it (#{newest}): a replay",
                code="DECISION_REPLAYED",
                details={"ref": decision.ref, "seq": decision.seq, "newest": newest})
        return decision

    def check(self, decision: Decision, role: str, digest: str) -> None:
        """Whether ``decision`` lets ``role`` serve ``digest`` under this engine's policy
        (and, for a production engine's live version, is not older than the model's newest
        live decision)."""
        try:
            check_decision(decision, name=decision.name, digest=digest,
                           stages=self.stages(role), need_approvals=self.stage == "production")
        except BatonError as exc:
            exc.details.setdefault("ref", decision.ref)  # every refusal names its version
            raise
        if role == LIVE and self.stage == "production":
            # Checked last: an old decision the policy refuses anyway is reported as such.
            self.live_ledger.check(decision)

    def accept(self, decision: Decision, role: str) -> None:
        """Remember ``decision`` as acted upon: anything older is a replay from now on."""
        self.seen[decision.ref] = max(self.seen.get(decision.ref, -1), decision.seq)
        if role == LIVE and self.stage == "production":
            self.live_ledger.accept(decision)
