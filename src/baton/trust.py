"""Signed decisions: what the registry vouches for, and how an engine checks it.

The registry holds an Ed25519 private key in a file of its own (never in its database).
Every lifecycle decision it takes on a bundle version (push, validate, promote, approve,
reject, archive, rollback) is written as a :class:`Decision`: the version's complete state
at that moment, serialised canonically and signed. Engines pin the registry's public key
and serve a digest only when a valid signed decision puts it in a stage their policy
allows, with enough approvals and no rejection. Someone who can edit the registry's
database but does not hold the key cannot forge one.

A signed decision travels as ``{"payload": BASE64URL, "signature": BASE64URL, "key": KEYID}``
where ``payload`` is the canonical JSON of the decision (sorted keys, no spaces) and the
signature is Ed25519 over exactly those bytes. Public keys are written ``ed25519:BASE64``
(the 32 raw bytes), short enough to paste into a command line.

Replays: a database editor who cannot sign can still present an *old* genuine decision
(say, the one that once put a now-archived version in production). Each decision carries
``seq``, the registry's audit sequence number of the action that produced it; an engine
keeps, per model, the highest ``seq`` of the live decisions it has accepted
(:class:`DecisionLedger`) and refuses an older one. An engine that starts fresh has no
ledger yet: at worst it serves a version that was genuinely signed for that stage once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from baton.errors import BatonError, NotApproved, StageNotAllowed, UntrustedDecision

KEY_PREFIX = "ed25519:"
DECISION_VERSION = 1

__all__ = [
    "KEY_PREFIX", "Decision", "DecisionLedger", "PublicKey", "SigningKey", "check_decision",
    "generate_signing_key", "load_or_create_signing_key", "load_signing_key",
    "parse_public_key", "sign_decision", "verify_decision",
]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- keys ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: what an engine pins."""

    raw: bytes

    @property
    def text(self) -> str:
        """``ed25519:BASE64`` (standard base64 of the 32 raw bytes)."""
        return KEY_PREFIX + base64.b64encode(self.raw).decode()

    @property
    def key_id(self) -> str:
        """A short fingerprint: the first 16 hex digits of the sha256 of the raw key."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


class SigningKey:
    """The registry's Ed25519 private key."""

    def __init__(self, private: Any) -> None:
        self._private = private

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return PublicKey(self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, data: bytes) -> bytes:
        return bytes(self._private.sign(data))


def generate_signing_key(path: Path) -> SigningKey:
    """A new key written to ``path`` (PEM, mode 0600), refusing to overwrite one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two registries starting at once never end up with two different keys.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return SigningKey(private)


def load_signing_key(path: Path) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise BatonError(f"the registry's signing key {path} does not exist",
                         code="SIGNING_KEY_MISSING", details={"path": str(path)}) from None
    except (OSError, ValueError, TypeError) as exc:
        raise BatonError(f"the registry's signing key {path} cannot be read: {exc}",
                         code="SIGNING_KEY_INVALID", details={"path": str(path)}) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise BatonError(f"{path} is not an Ed25519 private key", code="SIGNING_KEY_INVALID",
                         details={"path": str(path)})
    return SigningKey(private)


def load_or_create_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """The key at ``path``, created on first use; and whether it was created now."""
    try:
        return generate_signing_key(path), True
    except FileExistsError:
        return load_signing_key(path), False


def parse_public_key(value: str) -> PublicKey:
    """``ed25519:BASE64``, or the path of a file holding that text."""
    text = value.strip()
    if not text.startswith(KEY_PREFIX) and Path(text).is_file():
        text = Path(text).read_text().strip()
    if not text.startswith(KEY_PREFIX):
        raise BatonError(f"a registry key is written {KEY_PREFIX}BASE64 (see 'baton registry "
                         f"key'), or is a file holding that; got {value[:80]!r}",
                         code="INVALID_REGISTRY_KEY")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise BatonError(f"registry key {text[:60]!r} is not 32 bytes of base64",
                         code="INVALID_REGISTRY_KEY")
    return PublicKey(raw)


# -- decisions -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """A bundle version's whole lifecycle state at one moment, as the registry signs it."""

    name: str
    version: str
    digest: str
    stage: str
    #: Users who approved / rejected this version (sorted).
    approvals: tuple[str, ...] = ()
    rejections: tuple[str, ...] = ()
    #: The registry's approval rule when it signed.
    approvals_required: int = 1
    #: The audit sequence number of the action that produced this decision.
    seq: int = 0
    #: What produced it: push, validate, promote, approve, reject, archive, rollback.
    action: str = ""
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    v: int = DECISION_VERSION

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def payload(self) -> bytes:
        body = asdict(self)
        body["approvals"] = sorted(self.approvals)
        body["rejections"] = sorted(self.rejections)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_payload(cls, data: bytes) -> Decision:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("v") != DECISION_VERSION:
            raise ValueError("not a version 1 decision")
        return cls(name=str(body["name"]), version=str(body["version"]),
                   digest=str(body["digest"]), stage=str(body["stage"]),
                   approvals=tuple(map(str, body["approvals"])),
                   rejections=tuple(map(str, body["rejections"])),
                   approvals_required=int(body["approvals_required"]), seq=int(body["seq"]),
                   action=str(body["action"]), time=str(body["time"]))


def sign_decision(key: SigningKey, decision: Decision) -> dict[str, str]:
    payload = decision.payload()
    return {"payload": _b64(payload), "signature": _b64(key.sign(payload)),
            "key": key.public.key_id}


def verify_decision(key: PublicKey, signed: Any, *, ref: str = "") -> Decision:
    """The decision in ``signed``, if ``key`` signed it; else :class:`UntrustedDecision`."""
    what = ref or "this version"
    if not isinstance(signed, dict) or not signed.get("payload") or not signed.get("signature"):
        raise UntrustedDecision(f"the registry sent no signed decision for {what}; an engine "
                                "serves only what the registry signed", code="UNSIGNED",
                                details={"ref": ref})
    try:
        payload = _unb64(str(signed["payload"]))
        signature = _unb64(str(signed["signature"]))
    except (binascii.Error, ValueError):
        payload, signature = b"", b""
    if not key.verify(signature, payload):
        raise UntrustedDecision(
            f"the decision for {what} is not signed by the pinned registry key {key.key_id} "
            "(altered, forged, or another registry's)", code="BAD_SIGNATURE",
            details={"ref": ref, "key": key.key_id, "signed_by": signed.get("key")})
    try:
        return Decision.from_payload(payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise UntrustedDecision(f"the signed decision for {what} is malformed: {exc}",
                                details={"ref": ref}) from None


def check_decision(decision: Decision, *, name: str, digest: str, stages: tuple[str, ...],
                   need_approvals: bool) -> None:
    """Refuse unless ``decision`` covers exactly this digest in an allowed stage, with no
    rejection and (``need_approvals``) at least the approvals the registry's rule asks."""
    ref = f"{decision.ref} ({decision.digest})"
    if decision.name != name or decision.digest != digest:
        raise UntrustedDecision(
            f"the signed decision is for {ref}, not for {name} {digest}",
            code="DECISION_MISMATCH",
            details={"name": name, "digest": digest, "signed": decision.digest})
    if decision.stage not in stages:
        raise StageNotAllowed(
            f"{ref} is {decision.stage} by its latest signed decision; this engine serves "
            f"only {' or '.join(stages)}",
            details={"ref": decision.ref, "stage": decision.stage, "allowed": list(stages)})
    if decision.rejections:
        raise NotApproved(f"{ref} was rejected by {', '.join(decision.rejections)}",
                          details={"ref": decision.ref, "rejected_by": list(decision.rejections)})
    if need_approvals and len(decision.approvals) < decision.approvals_required:
        raise NotApproved(
            f"{ref} has {len(decision.approvals)} of the {decision.approvals_required} "
            "approvals the registry requires",
            details={"ref": decision.ref, "approvals": list(decision.approvals),
                     "required": decision.approvals_required})


class DecisionLedger:
    """Per model, the newest live decision an engine accepted; older ones are replays."""

    def __init__(self) -> None:
        self.newest: dict[str, int] = {}

    def check(self, decision: Decision) -> None:
        seen = self.newest.get(decision.name, -1)
        if decision.seq < seen:
            raise UntrustedDecision(
                f"the signed decision for {decision.ref} (#{decision.seq}) is older than one "
                f"this engine already followed for {decision.name} (#{seen}): a replay",
                code="DECISION_REPLAYED",
                details={"ref": decision.ref, "seq": decision.seq, "newest": seen})

    def accept(self, decision: Decision) -> None:
        self.check(decision)
        self.newest[decision.name] = decision.seq
