"""The registry's HTTP API (Starlette). Every route checks the caller's token and role.

The registry is not on the serving hot path, so it uses Starlette's routing for clarity;
the service methods are synchronous and Starlette runs them in its thread pool.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Route

from baton.errors import BatonError, PayloadTooLarge, RequestError
from baton.registry.identity import Actor, only_fields, token_fields
from baton.registry.openapi import AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX, openapi_document
from baton.registry.reports import (
    CELL_SECONDS,
    PAGE_HEADERS,
    served_json,
    with_report,
    written_report,
)
from baton.registry.service import Registry
from baton.runtime.runner import cut_lines

API = "/api/v1"
log = logging.getLogger("baton.registry")


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _ref(request: Request) -> str:
    p = request.path_params
    return f"{p['name']}@{p['version']}" if "version" in p else p["name"]


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", code="BAD_REQUEST")
    return data


def _text(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RequestError(f"field {key!r} must be a string", code="BAD_REQUEST",
                           details={"field": key})
    return value


def _count(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter within ``[lo, hi]``, or a 400 naming it."""
    raw = request.query_params.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise RequestError(f"query parameter {key!r} must be a whole number from {lo} to "
                           f"{hi}, got {raw[:40]!r}", details={"field": key})
    return int(raw)


def create_app(registry: Registry, *, max_upload_bytes: int = 1 << 30) -> Starlette:
    def actor(request: Request) -> Actor:
        return registry.authenticate(_token(request))

    def whoami(request: Request) -> Response:
        return JSONResponse(actor(request).whoami())

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def public_key(request: Request) -> Response:
        # Open to all: the key that engines and `baton audit verify` pin is public.
        key = registry.signing_key.public
        return JSONResponse({"key": key.text, "key_id": key.key_id})

    def list_bundles(request: Request) -> Response:
        q = request.query_params
        return JSONResponse({"bundles": registry.list(actor(request), q.get("name"),
                                                      q.get("stage"))})

    async def push(request: Request) -> Response:
        a = await run_in_threadpool(actor, request)
        fd, tmp = tempfile.mkstemp(prefix="baton-upload-", suffix=".baton")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise PayloadTooLarge(f"bundle archive exceeds {max_upload_bytes} bytes",
                                              details={"limit": max_upload_bytes})
                    f.write(chunk)
            if size == 0:
                raise RequestError("send the bundle archive (.baton) as the request body",
                                   code="EMPTY_REQUEST")
            desc, created = await run_in_threadpool(registry.push, a, Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return JSONResponse(desc, status_code=201 if created else 200)

    def show(request: Request) -> Response:
        return JSONResponse(with_report(registry.reports, registry.show(actor(request),
                                                                        _ref(request))))

    def report(request: Request) -> Response:
        a = actor(request)
        desc = registry.show(a, _ref(request))  # the version's read scope, and its digest
        if request.url.path.endswith(".html"):
            return Response(registry.reports.read(desc["digest"], "html"),
                            media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
        stored = registry.reports.read(desc["digest"], "json")
        return JSONResponse(served_json(stored, desc, registry.history(a, desc["name"])))

    def archive(request: Request) -> Response:
        desc, path = registry.archive_path(actor(request), _ref(request))
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{desc['name']}-{desc['version']}.baton",
                            headers={"x-baton-digest": desc["digest"]})

    async def promote(request: Request) -> Response:
        data = await _json(request)
        a = await run_in_threadpool(actor, request)
        result = await run_in_threadpool(registry.promote, a, _ref(request),
                                         _text(data, "to", ""), _text(data, "reason", ""))
        return JSONResponse(result)

    async def decide(request: Request) -> Response:
        data = await _json(request)
        decision = "approve" if request.url.path.endswith("/approve") else "reject"
        a = await run_in_threadpool(actor, request)
        return JSONResponse(await run_in_threadpool(
            registry.decide, a, _ref(request), decision, _text(data, "reason", "")))

    def history(request: Request) -> Response:
        return JSONResponse({"events": registry.history(actor(request),
                                                        request.path_params["name"])})

    def audit(request: Request) -> Response:
        who = actor(request)
        limit = _count(request, "limit", AUDIT_PAGE_DEFAULT, 1, AUDIT_PAGE_MAX)
        after = _count(request, "after", 0, 0, 2**62)
        last = _count(request, "last", 0, 1, AUDIT_PAGE_MAX)
        if last and ("after" in request.query_params or "limit" in request.query_params):
            raise RequestError("query parameter 'last' (the newest events) goes without "
                               "'after' and 'limit'", details={"field": "last"})
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "jsonl"):
            raise RequestError(f"query parameter 'format' must be json or jsonl, got "
                               f"{fmt[:40]!r}", details={"field": "format"})
        # head: the signed checkpoint the chain must reach (see baton.registry.audit), read
        # before the events so that it never runs ahead of them.
        head = registry.audit_head()
        if last:  # the newest page (what a screen shows), still oldest first
            events, more = registry.audit_log(who, last=last), False
        else:
            events = registry.audit_log(who, after=after, limit=limit + 1)
            more = len(events) > limit
            events = events[:limit]
        following = events[-1]["id"] if more else None
        if fmt == "jsonl":
            return PlainTextResponse("".join(json.dumps(e) + "\n" for e in events),
                                     media_type="application/x-ndjson",
                                     headers={} if following is None
                                     else {"x-next-after": str(following)})
        return JSONResponse({"events": events, "head": head, "next": following})

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def create_user(request: Request) -> Response:
        data = only_fields(await _json(request), ("name", "role"))
        a = await run_in_threadpool(actor, request)
        return JSONResponse(await run_in_threadpool(registry.create_user, a, _text(data, "name"),
                                                 _text(data, "role")), status_code=201)

    async def create_token(request: Request) -> Response:
        options = token_fields(await _json(request))
        a = await run_in_threadpool(actor, request)
        made = await run_in_threadpool(lambda: registry.create_token(
            a, request.path_params["name"], **options))
        return JSONResponse(made, status_code=201)

    def list_tokens(request: Request) -> Response:
        q = request.query_params
        all_users = q.get("all", "") in ("1", "true")
        return JSONResponse({"tokens": registry.list_tokens(actor(request), q.get("user"),
                                                            all_users)})

    def revoke_token(request: Request) -> Response:
        raw = request.path_params["token_id"]
        if not raw.isdigit() or len(raw) > 18:
            raise RequestError(f"a token id is a number, got {raw!r}",
                               details={"field": "id"})
        return JSONResponse(registry.revoke_token(actor(request), int(raw)))

    # Starlette types every handler for Exception; one registered for a class gets only it,
    # and anything else would be a crash.
    async def on_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, BatonError):
            return await on_crash(request, exc)
        body: dict[str, Any] = {"error": exc.message, "code": exc.code}
        if exc.details:
            body["details"] = exc.details
        return JSONResponse(body, status_code=exc.http_status)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            return await on_crash(request, exc)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        body: dict[str, Any] = {"error": f"{request.method} {request.url.path}: {exc.detail}",
                                "code": code}
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            body["error"] += f"; see {API}/openapi.json"
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by
            # several routes (GET and POST /bundles) allows all of theirs.
            allowed = sorted({m for r in routes if isinstance(r, Route) and r.methods
                              and r.matches(request.scope)[0] == Match.PARTIAL
                              for m in r.methods})
            headers["Allow"] = ", ".join(allowed)
            body["details"] = {"allowed": headers["Allow"]}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def on_crash(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this answer, so the server logs the traceback too.
        log.error("registry: %s %s failed: %r", request.method, request.url.path, exc)
        return JSONResponse({"error": "internal error in the registry (logged on the "
                             "server)", "code": "INTERNAL_ERROR"}, status_code=500)

    routes = [
        Route(f"{API}/health", health),
        Route(f"{API}/openapi.json", openapi),
        Route(f"{API}/key", public_key),
        Route(f"{API}/whoami", whoami),
        Route(f"{API}/bundles", list_bundles, methods=["GET"]),
        Route(f"{API}/bundles", push, methods=["POST"]),
        Route(f"{API}/bundles/{{name}}", show),
        Route(f"{API}/bundles/{{name}}/{{version}}", show),
        Route(f"{API}/bundles/{{name}}/{{version}}/archive", archive),
        Route(f"{API}/bundles/{{name}}/{{version}}/report", report),
        Route(f"{API}/bundles/{{name}}/{{version}}/report.html", report),
        Route(f"{API}/bundles/{{name}}/{{version}}/promote", promote, methods=["POST"]),
        Route(f"{API}/bundles/{{name}}/{{version}}/approve", decide, methods=["POST"]),
        Route(f"{API}/bundles/{{name}}/{{version}}/reject", decide, methods=["POST"]),
        Route(f"{API}/history/{{name}}", history),
        Route(f"{API}/audit", audit),
        Route(f"{API}/users", create_user, methods=["POST"]),
        Route(f"{API}/users/{{name}}/tokens", create_token, methods=["POST"]),
        Route(f"{API}/tokens", list_tokens, methods=["GET"]),
        Route(f"{API}/tokens/{{token_id}}", revoke_token, methods=["DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={
        BatonError: on_error, HTTPException: on_http_error, Exception: on_crash})


def subprocess_check_runner(home: Path, timeout: float = 900.0,
                            isolation: str = "sandbox") -> Any:
    """Check a bundle in a child process with the registry's own Baton home: ``baton
    report`` runs the check (its report is the result) and, on a pass, measures the
    handoff report on the same started worker (kept under ``handoff``, see
    registry/reports.py). The model runs under ``isolation`` (default: the sandbox, so that
    pushed code never sees the registry's signing key, database or tokens)."""

    def run(bundle_dir: Path) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="baton-report-") as tmp:
            check, handoff = Path(tmp) / "check.json", Path(tmp) / "handoff"
            env = dict(os.environ, BATON_HOME=str(home), BATON_ISOLATION=isolation)
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "baton", "report", str(bundle_dir), "--check-out",
                     str(check), "--output", str(handoff), "--seconds", str(CELL_SECONDS)],
                    capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                    timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"passed": False, "failed_stage": "check",
                        "error": {"code": "CHECK_TIMEOUT",
                                  "message": f"baton check took over {timeout:.0f}s"}}
            if not check.exists():
                return {"passed": False, "failed_stage": "check",
                        "error": {"code": "CHECK_CRASHED", "message": cut_lines(proc.stderr, 2000)}}
            result: dict[str, Any] = json.loads(check.read_text())
            if result.get("passed"):  # what approvers read: written beside the check
                result["handoff"] = written_report(handoff, proc)
            return result

    return run
