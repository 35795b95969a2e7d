"""The registry, reached from the browser through the engine (same origin).

Only the registry calls the dashboard makes are forwarded: reads (list, show, a version's
report page, history, audit, whoami) and decisions (approve, reject). Each carries the
caller's own ``Authorization`` header and nothing else, so the registry applies the caller's
role; the engine's own registry token is never used here.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

if TYPE_CHECKING:
    from baton.serving.service import Engine

PREFIX = "/ui/api/registry"
#: Seconds to wait for the registry before answering 504.
TIMEOUT = 15.0
MAX_BODY = 64 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_ANY = "*"
#: (method, path pattern, query parameters passed on); ``*`` is one name or version.
ROUTES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("GET", ("whoami",), ()),
    ("GET", ("bundles",), ("name", "stage")),
    ("GET", ("bundles", _ANY), ()),
    ("GET", ("bundles", _ANY, _ANY), ()),
    ("GET", ("bundles", _ANY, _ANY, "report.html"), ()),
    ("POST", ("bundles", _ANY, _ANY, "approve"), ()),
    ("POST", ("bundles", _ANY, _ANY, "reject"), ()),
    ("GET", ("history", _ANY), ()),
    ("GET", ("audit",), ("last",)),
]


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    #: Depends on the caller's token: never cached.
    private: bool = False


def json_reply(status: int, body: dict[str, Any], private: bool = False) -> Reply:
    return Reply(status, orjson.dumps(body), private=private)


@dataclass(frozen=True)
class Followed:
    """The registry an engine follows: its URL, the stage followed, and the engine's own TLS
    options for it (its CA, its client certificate)."""

    url: str
    stage: str | None
    tls: dict[str, Any]


def followed_by(engine: Engine) -> Followed | None:
    """The registry ``engine`` follows, or None when it serves local bundles."""
    client = getattr(engine.source, "client", None)
    url = getattr(client, "url", None)
    if not isinstance(url, str):
        return None
    tls = getattr(client, "tls", None)
    return Followed(url, getattr(engine.source, "stage", None),
                    tls if isinstance(tls, dict) else {})


class RegistryProxy:
    """``followed()`` says which registry to forward to (None: none, and the page says so)."""

    def __init__(self, followed: Callable[[], Followed | None]) -> None:
        self.followed = followed

    async def handle(self, method: str, rest: str, scope: dict[str, Any],
                     receive: Callable[[], Awaitable[dict[str, Any]]]) -> Reply:
        followed = self.followed()
        parts = [p for p in rest.split("/") if p]
        if not parts:  # the page asks first whether there is a registry to show
            if method != "GET":
                return _not_allowed(method, ["GET"])  # the same 405 as any read-only route
            return json_reply(200, {"url": followed.url if followed else None,
                                    "stage": followed.stage if followed else None})
        if followed is None:
            return json_reply(404, {"error": "this engine does not serve from a registry "
                                    "(start it with --registry to see one here)",
                                    "code": "NO_REGISTRY"})
        route = _match(method, parts)
        if isinstance(route, Reply):
            return route
        query = {k: v for k, v in parse_qsl(scope["query_string"].decode("latin-1"))
                 if k in route}
        body = await _read_body(receive) if method == "POST" else b""
        if body is None:
            return json_reply(413, {"error": f"request body exceeds {MAX_BODY} bytes",
                                    "code": "PAYLOAD_TOO_LARGE", "details": {"limit": MAX_BODY}})
        auth = next((v.decode("latin-1") for k, v in scope["headers"]
                     if k == b"authorization"), None)
        target = f"{followed.url}/api/v1/{'/'.join(quote(p, safe=':+') for p in parts)}"
        if query:
            target += "?" + urlencode(query)
        return await _forward(method, target, auth, body, followed.url, followed.tls)


def _match(method: str, parts: list[str]) -> tuple[str, ...] | Reply:
    """The query parameters the matching route passes on, or the 404/405 reply."""
    if not all(_SEGMENT.fullmatch(p) for p in parts):
        return _not_found(parts)
    allowed = []
    for verb, pattern, query in ROUTES:
        if len(pattern) == len(parts) and all(w in (_ANY, p) for w, p in zip(pattern, parts,
                                                                             strict=True)):
            if verb == method:
                return query
            allowed.append(verb)
    return _not_allowed(method, allowed) if allowed else _not_found(parts)


def _not_allowed(method: str, allowed: list[str]) -> Reply:
    return json_reply(405, {"error": f"method {method} not allowed here; use {allowed[0]}",
                            "code": "METHOD_NOT_ALLOWED", "details": {"allowed": allowed[0]}})


def _not_found(parts: list[str]) -> Reply:
    return json_reply(404, {"error": f"the dashboard does not forward /{'/'.join(parts)} to "
                            "the registry", "code": "NOT_FOUND"})


async def _read_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes | None:
    chunks, size = [], 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


async def _forward(method: str, target: str, auth: str | None, body: bytes,
                   registry: str, tls: dict[str, Any]) -> Reply:
    import httpx  # only engines whose dashboard talks to a registry need it

    headers = {"accept": "application/json"}
    if auth:
        headers["authorization"] = auth
    if method == "POST":
        headers["content-type"] = "application/json"
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, **tls) as client:
            resp = await client.request(method, target, headers=headers, content=body or None)
    except httpx.TimeoutException:
        return json_reply(504, {"error": f"the registry at {registry} did not answer within "
                                f"{TIMEOUT:.0f}s", "code": "REGISTRY_TIMEOUT"}, private=True)
    except httpx.TransportError as exc:
        return json_reply(502, {"error": f"cannot reach the registry at {registry}: {exc}",
                                "code": "REGISTRY_UNREACHABLE"}, private=True)
    return Reply(resp.status_code, resp.content,
                 resp.headers.get("content-type", "application/json"), private=True)
