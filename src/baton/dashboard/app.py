"""Answer ``/ui`` requests: the page and its assets, and the registry proxy under /ui/api."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from baton.dashboard.proxy import PREFIX as PROXY_PREFIX
from baton.dashboard.proxy import Followed, RegistryProxy, Reply, json_reply

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
# Everything the page needs is served from here: no inline script, no other origin.
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
     b"form-action 'none'"),
]


class Dashboard:
    """The ASGI callable for paths under ``/ui``; the engine's app (or a cluster's ingress)
    hands them over. ``followed()`` is the registry the engine follows, if any."""

    def __init__(self, followed: Callable[[], Followed | None]) -> None:
        self.proxy = RegistryProxy(followed)
        self._files: dict[str, tuple[bytes, str]] | None = None  # read on first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == PROXY_PREFIX or path.startswith(PROXY_PREFIX + "/"):
            reply = await self.proxy.handle(method, path[len(PROXY_PREFIX):], scope, receive)
        else:
            reply = self._static(method, path)
        headers = [(b"content-type", reply.content_type.encode()),
                   (b"content-length", str(len(reply.body)).encode()),
                   (b"cache-control", b"no-store" if reply.private else b"no-cache"),
                   *_HEADERS]
        if reply.status == 405:  # HTTP asks a 405 to say what is allowed
            allowed = orjson.loads(reply.body).get("details", {}).get("allowed")
            headers += [(b"allow", str(allowed).encode())] if allowed else []
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else reply.body})

    def _static(self, method: str, path: str) -> Reply:
        if path in ("/ui", "/ui/"):
            name = "index.html"
        else:
            name = path.removeprefix("/ui/static/") if path.startswith("/ui/static/") else ""
        found = self.files().get(name)
        if found is None:
            return json_reply(404, {"error": f"no dashboard page {path}; open /ui",
                                    "code": "NOT_FOUND"})
        if method not in ("GET", "HEAD"):
            return json_reply(405, {"error": f"method {method} not allowed here; use GET",
                                    "code": "METHOD_NOT_ALLOWED",
                                    "details": {"allowed": "GET"}})
        body, content_type = found
        return Reply(200, body, content_type)

    def files(self) -> dict[str, tuple[bytes, str]]:
        """The assets by file name: only files in ``static/`` can ever be served."""
        if self._files is None:
            self._files = {p.name: (p.read_bytes(), _TYPES[p.suffix])
                           for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES}
        return self._files
