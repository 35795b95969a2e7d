"""Who may call which engine route: bearer tokens with scopes, checked before routing.

Each path needs the scope its route declares in the route table
(:data:`~baton.server.handlers.ENGINE_ROUTES`), plus the dashboard's paths: together
:data:`ROUTE_SCOPES`. Probes and the dashboard's static files are open. Any other path
needs a valid token before the router sees it, so an unauthenticated caller learns nothing
about which routes or models exist.

Tokens come from two sources, tried in this order: the local token file
(:class:`~baton.server.tokens.TokenFile`) and, when the engine follows a registry, the
registry itself (:class:`~baton.server.registry_tokens.RegistryTokens`). A token found in
the file is answered by the file; any other goes to the registry.

Cost on the hot path: one SHA-256 of the token and a dict lookup (the file's table, or the
registry cache); the route's scope is a dict lookup for fixed paths and at most a handful
of segment comparisons for the others.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from baton.errors import Forbidden, Unauthorized
from baton.scopes import SCOPES
from baton.server.handlers import ENGINE_ROUTES
from baton.server.routes import OPEN, Header
from baton.server.tokens import TOKEN_PREFIX, TokenEntry, TokenFile, hash_token

if TYPE_CHECKING:
    from baton.server.registry_tokens import RegistryTokens

__all__ = ["ANY", "OPEN", "ROUTE_SCOPES", "Guard", "Principal", "RouteScopes", "bearer"]

#: Any valid token, whatever its scopes: paths that match no route (the router says 404).
ANY = "authenticated"
#: Path pattern -> scope. ``*`` is one segment, a trailing ``**`` any number (even none).
ROUTE_SCOPES: list[tuple[str, str]] = [
    *ENGINE_ROUTES.scope_patterns(),
    ("/ui", OPEN),
    ("/ui/static/**", OPEN),
    ("/ui/api/**", "read"),
]
#: Longest token accepted: anything longer is not a token and is never looked up.
MAX_TOKEN_BYTES = 512
CHALLENGE: tuple[Header, ...] = ((b"www-authenticate", b'Bearer realm="baton"'),)


class Principal:
    """An authenticated caller: the token's name (or its registry user) and scopes."""

    __slots__ = ("name", "scopes", "source", "granted")

    def __init__(self, name: str, scopes: frozenset[str], source: str) -> None:
        self.name = name
        #: The scopes as granted (shown in a 403).
        self.scopes = scopes
        #: "file" or "registry".
        self.source = source
        # admin grants every scope: expanded once, so a check is one set membership.
        self.granted = frozenset(SCOPES) if "admin" in scopes else scopes

    def allows(self, scope: str) -> bool:
        return scope in self.granted

    def __repr__(self) -> str:
        return f"Principal({self.name!r}, {sorted(self.scopes)}, {self.source!r})"


class RouteScopes:
    """The scope a path needs, from :data:`ROUTE_SCOPES` (paths as the router reads them:
    a trailing slash ignored, segments compared literally, ``*`` even an empty one).

    A path seen before is one dict lookup (the cache holds up to 1,024 paths and starts
    again when full, so junk paths cannot grow it); a new one costs a few microseconds:
    fixed paths a dict lookup, the patterns one compiled alternation whose matching group
    names the scope."""

    def __init__(self, table: list[tuple[str, str]]) -> None:
        self.exact = {p: s for p, s in table if "*" not in p}
        patterns = [(p, s) for p, s in table if "*" in p]
        self.scopes = [s for _, s in patterns]
        self.regex = re.compile("|".join(f"(?P<r{i}>{_regex(p)})"
                                         for i, (p, _) in enumerate(patterns)))
        self.cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        found = self.cache.get(path)
        if found is None:
            found = self._scope(path)
            if len(self.cache) >= 1024:
                self.cache.clear()
            self.cache[path] = found
        return found

    def _scope(self, path: str) -> str:
        path = path.rstrip("/") or "/"
        found = self.exact.get(path)
        if found is not None:
            return found
        m = self.regex.fullmatch(path)
        return self.scopes[int(m.lastgroup[1:])] if m and m.lastgroup else ANY


def _regex(pattern: str) -> str:
    parts = pattern.strip("/").split("/")
    tail = "(?:/.*)?" if parts[-1] == "**" else ""
    parts = parts[:-1] if tail else parts
    return "".join("/" + ("[^/]*" if p == "*" else re.escape(p)) for p in parts) + tail


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the first ``Authorization: Bearer`` header, or None."""
    for key, value in headers:
        if key == b"authorization":
            if value[:7].lower() != b"bearer ":
                return None
            token = value[7:].strip()
            return token or None
    return None


class Guard:
    """Admits a request or raises the 401/403/503 it gets, before any routing."""

    def __init__(self, local: TokenFile | None = None,
                 registry: RegistryTokens | None = None) -> None:
        self.local = local
        self.registry = registry
        self.scope_of = RouteScopes(ROUTE_SCOPES)
        self._file_principals: dict[str, tuple[TokenEntry, Principal]] = {}

    def describe(self) -> str:
        sources = ([f"token file {self.local.path}"] if self.local else []) + (
            [f"registry {self.registry.url}"] if self.registry else [])
        return " and ".join(sources)

    async def admit(self, scope: dict[str, Any]) -> Principal | None:
        needed = self.scope_of(scope["path"])
        if needed == OPEN:
            return None
        token = bearer(scope["headers"])
        if token is None:
            raise Unauthorized("this engine needs a token: send 'Authorization: Bearer "
                               "TOKEN'")
        principal = await self.identify(token)
        if needed != ANY and not principal.allows(needed):
            raise Forbidden(f"this token ({principal.name}) lacks the {needed!r} scope that "
                            f"{scope['method']} {scope['path']} needs",
                            details={"scope": needed, "scopes": sorted(principal.scopes)})
        return principal

    async def identify(self, token: bytes) -> Principal:
        if len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise Unauthorized("invalid token", code="INVALID_TOKEN")
        digest = hash_token(token)
        if self.local is not None:
            entry = self.local.lookup(digest)
            if entry is not None:
                if entry.revoked:
                    raise Unauthorized(f"token {entry.name} was revoked",
                                       code="TOKEN_REVOKED")
                if time.time() >= entry.expires_at:
                    raise Unauthorized(f"token {entry.name} expired at "
                                       f"{entry.expires.isoformat() if entry.expires else ''}",
                                       code="TOKEN_EXPIRED")
                return self._principal(entry)
        if self.registry is not None and not token.startswith(TOKEN_PREFIX.encode()):
            return await self.registry.identify(token, digest)
        raise Unauthorized("invalid token", code="INVALID_TOKEN")

    def _principal(self, entry: TokenEntry) -> Principal:
        """One Principal per file entry, made again only when the file changed it."""
        known = self._file_principals.get(entry.sha256)
        if known is not None and known[0] is entry:
            return known[1]
        principal = Principal(entry.name, entry.scopes, "file")
        if len(self._file_principals) > 4 * len(self.local.by_digest if self.local else ()):
            self._file_principals.clear()  # entries of earlier versions of the file
        self._file_principals[entry.sha256] = (entry, principal)
        return principal
