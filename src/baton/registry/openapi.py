"""The registry API as an OpenAPI 3.1 document (``GET /api/v1/openapi.json``).

One entry per route and method in :data:`OPERATIONS`; the app serves exactly these routes
(a test compares the two tables), so the document cannot drift from the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baton import __version__

#: The most audit events one page holds, and how many a page holds when not told.
AUDIT_PAGE_MAX = 10_000
AUDIT_PAGE_DEFAULT = 1_000

_ERROR = {"$ref": "#/components/schemas/Error"}
_TEXT = {"type": "string"}
_OBJECT = {"type": "object"}
_EVENTS = {"type": "array", "items": {"$ref": "#/components/schemas/AuditEvent"}}
_REASON = {"type": "object", "additionalProperties": False,
           "properties": {"reason": {"type": "string", "description": "Kept in the audit log"}}}
_STATUS_TEXT = {400: "Malformed request", 401: "No valid token", 403: "Role not allowed",
                404: "No such bundle, user or token", 409: "Conflict with the current state",
                413: "Body too large", 503: "Not available on this registry"}


@dataclass(frozen=True)
class Operation:
    """One method of one route: what it does, who may call it, what it takes and gives."""

    path: str
    method: str
    summary: str
    #: The permission it needs (baton.registry.auth.PERMISSIONS), "token" (any valid
    #: token), or "open" (no token).
    needs: str
    body: dict[str, Any] | None = None
    body_type: str = "application/json"
    answer: dict[str, Any] = field(default_factory=lambda: dict(_OBJECT))
    answer_type: str = "application/json"
    status: int = 200
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()
    errors: tuple[int, ...] = ()


OPERATIONS: tuple[Operation, ...] = (
    Operation("/api/v1/health", "get", "Liveness of the registry", "open",
              answer={"type": "object", "properties": {"ok": {"const": True}}}),
    Operation("/api/v1/openapi.json", "get", "This document", "open"),
    Operation("/api/v1/key", "get", "The public key that signs decisions and the audit log",
              "open", answer={"type": "object", "properties": {"key": _TEXT, "key_id": _TEXT}}),
    Operation("/api/v1/whoami", "get", "The caller: name, role, scopes and token", "token"),
    Operation("/api/v1/bundles", "get", "List bundle versions", "read",
              query=(("name", _TEXT, "Only this model"), ("stage", _TEXT, "Only this stage")),
              answer={"type": "object", "properties": {"bundles": {"type": "array"}}}),
    Operation("/api/v1/bundles", "post", "Push a bundle archive (.baton); 201 when new, "
              "200 when that digest is already stored", "push",
              body={"type": "string", "format": "binary"},
              body_type="application/octet-stream", status=201, errors=(400, 409, 413)),
    Operation("/api/v1/bundles/{name}", "get", "The latest version of a model", "read",
              errors=(404,)),
    Operation("/api/v1/bundles/{name}/{version}", "get", "One version: stage, digest, "
              "approvals", "read", errors=(404,)),
    Operation("/api/v1/bundles/{name}/{version}/archive", "get", "Download the archive "
              "(header x-baton-digest)", "read", answer={"type": "string", "format": "binary"},
              answer_type="application/octet-stream", errors=(404,)),
    Operation("/api/v1/bundles/{name}/{version}/report", "get", "The version's handoff "
              "report (JSON; written at validation) with its live stage, approvals and audit "
              "trail", "read", errors=(404,)),
    Operation("/api/v1/bundles/{name}/{version}/report.html", "get", "The handoff report "
              "as one self-contained page", "read", answer={"type": "string"},
              answer_type="text/html", errors=(404,)),
    Operation("/api/v1/bundles/{name}/{version}/promote", "post", "Move a version to a "
              "stage", "promote", errors=(400, 404, 409, 503),
              body={"type": "object", "required": ["to"], "properties": {
                  "to": {"$ref": "#/components/schemas/Stage"},
                  "reason": _TEXT}}),
    Operation("/api/v1/bundles/{name}/{version}/approve", "post", "Approve a version for "
              "production (signed)", "approve", body=_REASON, errors=(404, 409)),
    Operation("/api/v1/bundles/{name}/{version}/reject", "post", "Reject a version "
              "(signed)", "approve", body=_REASON, errors=(404, 409)),
    Operation("/api/v1/history/{name}", "get", "Every audit event of one model", "read",
              answer={"type": "object", "properties": {"events": _EVENTS}}),
    Operation("/api/v1/audit", "get", "One page of the audit log, oldest first, with the "
              "signed head checkpoint", "read", errors=(400,),
              query=(("limit", {"type": "integer", "minimum": 1, "maximum": AUDIT_PAGE_MAX,
                                "default": AUDIT_PAGE_DEFAULT}, "Events in this page"),
                     ("after", {"type": "integer", "minimum": 0, "default": 0},
                      "Only events with a larger id: the previous page's 'next'"),
                     ("last", {"type": "integer", "minimum": 1, "maximum": AUDIT_PAGE_MAX},
                      "Instead of limit and after: the newest N events (next is null)"),
                     ("format", {"enum": ["json", "jsonl"]}, "jsonl: JSON Lines, and the "
                      "next cursor in the X-Next-After header")),
              answer={"type": "object", "required": ["events", "head", "next"], "properties": {
                  "events": _EVENTS, "head": {"type": ["object", "null"]},
                  "next": {"type": ["integer", "null"],
                           "description": "'after' for the next page; null on the last"}}}),
    Operation("/api/v1/users", "post", "Create a user", "admin", status=201, errors=(400, 409),
              body={"type": "object", "required": ["name", "role"], "additionalProperties":
                    False, "properties": {"name": _TEXT, "role": _TEXT}}),
    Operation("/api/v1/users/{name}/tokens", "post", "Issue a token (shown once)", "tokens",
              status=201, errors=(400, 404),
              body={"type": "object", "additionalProperties": False, "properties": {
                  "days": {"type": "number", "exclusiveMinimum": 0},
                  "scopes": {"type": "array", "items": _TEXT},
                  "service": {"type": "boolean"}, "label": _TEXT}}),
    Operation("/api/v1/tokens", "get", "List tokens (never their values)", "tokens",
              query=(("user", _TEXT, "Another user's (admin)"),
                     ("all", {"enum": ["1", "true"]}, "Every user's (admin)"))),
    Operation("/api/v1/tokens/{token_id}", "delete", "Revoke a token", "tokens",
              errors=(400, 404)),
)


def _operation(op: Operation) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": _TEXT}
              for n in ("name", "version", "token_id") if f"{{{n}}}" in op.path]
    params += [{"name": n, "in": "query", "schema": s, "description": d}
               for n, s, d in op.query]
    codes = op.errors if op.needs == "open" else (401, 403, *op.errors)
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method}_{op.path.removeprefix('/api/v1/')}"
                       .replace("/", "_").replace("{", "").replace("}", "").replace(".", "_"),
        "responses": {str(op.status): {"description": "Done", "content": {
            op.answer_type: {"schema": op.answer}}},
            **{str(c): {"description": _STATUS_TEXT[c],
                        "content": {"application/json": {"schema": _ERROR}}}
               for c in sorted(set(codes))}},
        "x-baton-permission": op.needs,
    }
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_type != "application/json",
                              "content": {op.body_type: {"schema": op.body}}}
    if op.needs == "open":
        out["security"] = []
    return out


def openapi_document() -> dict[str, Any]:
    from baton.registry.models import STAGES  # the client imports this module: no ORM there

    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Baton registry", "version": __version__,
                 "description": "Bundle versions, stages, approvals, tokens and the signed "
                                "audit log. Every error is {error, code, details}."},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A registry token (bt_...)"}},
            "schemas": {
                "Stage": {"enum": list(STAGES)},
                "Error": {"type": "object", "required": ["error", "code"], "properties": {
                    "error": _TEXT, "code": _TEXT, "details": _OBJECT}},
                "AuditEvent": {"type": "object", "required": ["id", "action", "actor"],
                               "properties": {"id": {"type": "integer"}, "action": _TEXT,
                                              "actor": _TEXT}}}},
    }
