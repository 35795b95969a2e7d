"""Baton's errors: data with a stable code, rendered only at the edges.

Every error carries a stable machine-readable ``code``, a human message, optional
structured ``details``, the HTTP status it maps to and the CLI exit code. Nothing here
imports a web framework: the server and the CLI decide how to render an error.
"""

from __future__ import annotations

from typing import Any


class BatonError(Exception):
    """Root of every error Baton raises on purpose."""

    code = "BATON_ERROR"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return self.message


class SettingsError(BatonError):
    """An operator setting (option or BATON_* variable) has an invalid value."""

    code = "INVALID_SETTING"
    exit_code = 2


class ManifestError(BatonError):
    """A manifest (baton.toml) is missing, unreadable or has invalid fields."""

    code = "INVALID_MANIFEST"
    http_status = 400
    exit_code = 2


class BundleError(BatonError):
    """A bundle cannot be built, read or extracted."""

    code = "INVALID_BUNDLE"
    http_status = 400
    exit_code = 2


class UnsafeArchiveError(BundleError):
    code = "UNSAFE_ARCHIVE"


class DigestMismatchError(BundleError):
    code = "DIGEST_MISMATCH"


class ContractError(BatonError):
    """A contract declaration is invalid (not a violation by data: see ContractViolation)."""

    code = "INVALID_CONTRACT"
    http_status = 400
    exit_code = 2


class RequestError(BatonError):
    """A request is malformed: bad JSON, wrong structure."""

    code = "BAD_REQUEST"
    http_status = 400
    exit_code = 2


class PayloadTooLarge(RequestError):
    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class UnsupportedEncoding(RequestError):
    """A request body's Content-Encoding is neither gzip, deflate nor identity."""

    code = "UNSUPPORTED_ENCODING"
    http_status = 415


class ContractViolation(BatonError):
    """Data broke a contract. ``details['violations']`` lists record, field, expected, got."""

    code = "CONTRACT_VIOLATION"
    http_status = 422
    exit_code = 3

    def __init__(self, message: str, *, violations: list[dict[str, Any]],
                 direction: str = "input") -> None:
        super().__init__(message, details={"direction": direction, "violations": violations})
        self.violations = violations
        self.direction = direction
        if direction == "output":
            self.code = "OUTPUT_CONTRACT_VIOLATION"
            self.http_status = 500


class SampleMismatch(BatonError):
    """A model's answers differ from what they must be: the bundle's expected outputs, or
    its own answer to the same record in another batch (``baton check``)."""

    code = "SAMPLE_MISMATCH"
    exit_code = 3


class ModelNotFound(BatonError):
    code = "MODEL_NOT_FOUND"
    http_status = 404
    exit_code = 2


class RouteNotFound(BatonError):
    code = "NOT_FOUND"
    http_status = 404


class MethodNotAllowed(BatonError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405


class ModelNotReady(BatonError):
    code = "MODEL_NOT_READY"
    http_status = 503


class EnvironmentBuildError(BatonError):
    """Dependencies could not be resolved or installed. ``details['failures']`` lists them."""

    code = "ENVIRONMENT_BUILD_FAILED"
    exit_code = 4


class WorkerError(BatonError):
    """A worker failed: crashed, hung past its timeout, or could not start."""

    code = "WORKER_FAILED"
    http_status = 503
    exit_code = 5


class WorkerCrashed(WorkerError):
    code = "WORKER_CRASHED"


class WorkerLimitExceeded(WorkerCrashed):
    """The worker was stopped at one of its limits (``MEMORY_LIMIT``, ``PROCESS_LIMIT``):
    the request's own doing, so not one to retry (500, not 503)."""

    code = "WORKER_LIMIT_EXCEEDED"
    http_status = 500


class WorkerTimeout(WorkerError):
    code = "WORKER_TIMEOUT"
    http_status = 504


class ModelLoadError(WorkerError):
    """The model could not be imported or loaded inside its worker."""

    code = "MODEL_LOAD_FAILED"


class ModelError(BatonError):
    """The model's own code raised while predicting; the message is the model's."""

    code = "MODEL_ERROR"
    http_status = 500
    exit_code = 5


class Unauthorized(BatonError):
    """A missing, invalid or expired API token."""

    code = "UNAUTHORIZED"
    http_status = 401
    exit_code = 6


class Forbidden(BatonError):
    """The caller's role does not allow the action (or separation of duties forbids it)."""

    code = "FORBIDDEN"
    http_status = 403
    exit_code = 6


class NotFound(BatonError):
    code = "NOT_FOUND"
    http_status = 404
    exit_code = 2


class Conflict(BatonError):
    """The action contradicts the current state (immutable version, stage, approvals)."""

    code = "CONFLICT"
    http_status = 409
    exit_code = 7


class Unavailable(BatonError):
    code = "UNAVAILABLE"
    http_status = 503


class StageNotAllowed(Forbidden):
    """A version is not in a stage this engine's policy serves."""

    code = "STAGE_NOT_ALLOWED"


class NotApproved(Forbidden):
    """A version lacks the approvals the registry's rule asks for, or was rejected."""

    code = "NOT_APPROVED"


class UntrustedDecision(Forbidden):
    """No valid signed decision backs a version: unsigned, forged, mismatched or replayed."""

    code = "UNTRUSTED_DECISION"


class RegistryKeyRequired(Forbidden):
    """An engine asked to serve from a registry without a pinned registry public key."""

    code = "REGISTRY_KEY_REQUIRED"


class AuditChainBroken(BatonError):
    """The audit log was inserted into, altered or truncated by someone without the key."""

    code = "AUDIT_CHAIN_BROKEN"
    http_status = 500
    exit_code = 9
