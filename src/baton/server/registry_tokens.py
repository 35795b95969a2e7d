"""Registry-issued tokens on an engine: verified by the registry, cached for a bounded time.

An engine that follows a registry accepts the registry's own tokens: it asks
``GET /api/v1/whoami`` with the caller's token (through the same TLS options as its
registry client) and learns the user, role and scopes. So that the registry is not asked on
every request, and garbage cannot exhaust memory or hammer it:

- a valid answer is trusted for ``auth_cache_seconds`` (a revocation takes effect within
  that time), a refusal for a few seconds; both caches are bounded (least recently used
  entries go first), and refusals have their own cache, so garbage never evicts a valid
  token;
- concurrent requests with the same uncached token share one lookup;
- a registry that cannot be reached, or answers what is not understood, gives 503
  ``AUTH_UNAVAILABLE`` for tokens not in the cache: nothing is let through unverified.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from baton.errors import BatonError, Unauthorized, Unavailable
from baton.scopes import ROLE_SCOPES, SCOPES
from baton.server.auth import Principal

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("baton.server.auth")

#: Seconds a refused token is remembered (a token created just after is seen soon after).
REFUSED_SECONDS = 5.0
MAX_VALID = 10_000
MAX_REFUSED = 4_096
#: Seconds to wait for the registry's answer before 503.
TIMEOUT = 5.0
#: Refusal codes passed on as they are; any other 401 is INVALID_TOKEN.
_CODES = ("INVALID_TOKEN", "TOKEN_EXPIRED", "TOKEN_REVOKED")


class RegistryTokens:
    def __init__(self, url: str, tls: dict[str, Any], cache_seconds: float, *,
                 refused_seconds: float = REFUSED_SECONDS, timeout: float = TIMEOUT,
                 max_valid: int = MAX_VALID, max_refused: int = MAX_REFUSED) -> None:
        self.url = url.rstrip("/")
        self.max_valid, self.max_refused = max_valid, max_refused
        self.tls = tls
        self.cache_seconds = cache_seconds
        self.refused_seconds = min(refused_seconds, cache_seconds)
        self.timeout = timeout
        self._valid: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._refused: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Principal]] = {}
        self._http: httpx.AsyncClient | None = None  # made on first use, in the event loop
        #: Lookups sent to the registry (tests and /v1/stats can see the cache work).
        self.lookups = 0

    async def identify(self, token: bytes, digest: str) -> Principal:
        now = time.monotonic()
        hit = self._valid.get(digest)
        if hit is not None and hit[0] > now:
            self._valid.move_to_end(digest)
            return hit[1]
        refused = self._refused.get(digest)
        if refused is not None and refused[0] > now:
            raise Unauthorized(refused[2], code=refused[1])  # a new one: no growing traceback
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(token, digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda done: self._done(digest, done))
        # shield: a caller that disconnects does not cancel the lookup others wait for.
        return await asyncio.shield(pending)

    def _done(self, digest: str, done: asyncio.Future[Principal]) -> None:
        self._pending.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when nobody waits

    def sizes(self) -> tuple[int, int]:
        """Tokens remembered: (valid, refused)."""
        return len(self._valid), len(self._refused)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _lookup(self, token: bytes, digest: str) -> Principal:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.url + "/api/v1", timeout=self.timeout,
                                           **self.tls)
        self.lookups += 1
        try:
            resp = await self._http.get("/whoami", headers={
                "authorization": "Bearer " + token.decode("ascii"),
                "accept": "application/json"})
        except httpx.HTTPError as exc:
            log.warning("cannot verify a token: the registry at %s did not answer (%s)",
                        self.url, exc)
            raise _unavailable(f"the registry at {self.url} did not answer") from None
        if resp.status_code == 401:
            raise self._refuse(digest, resp)
        if resp.status_code != 200:
            raise _unavailable(f"the registry at {self.url} answered HTTP {resp.status_code}")
        principal, until = self._principal(resp)
        self._remember(self._valid, digest, (min(time.monotonic() + self.cache_seconds, until),
                                             principal), self.max_valid)
        return principal

    def _refuse(self, digest: str, resp: httpx.Response) -> Unauthorized:
        body = _json(resp)
        code = body.get("code") if body.get("code") in _CODES else "INVALID_TOKEN"
        error = body.get("error")
        said = error if isinstance(error, str) else "invalid token"
        message = f"the registry refused this token: {said[:200]}"
        if self.refused_seconds > 0:
            self._remember(self._refused, digest,
                           (time.monotonic() + self.refused_seconds, code, message),
                           self.max_refused)
        return Unauthorized(message, code=code)

    def _principal(self, resp: httpx.Response) -> tuple[Principal, float]:
        body = _json(resp)
        name, role, scopes = body.get("name"), body.get("role"), body.get("scopes")
        if not isinstance(name, str) or not isinstance(role, str):
            raise _unavailable(f"the registry at {self.url} answered whoami without a "
                               "user name and role")
        if isinstance(scopes, list):
            granted = frozenset(s for s in scopes if isinstance(s, str) and s in SCOPES)
        else:  # a registry that does not name scopes: those of the user's role
            granted = ROLE_SCOPES.get(role, frozenset())
        return Principal(name, granted, "registry"), _cache_limit(body.get("token"))

    @staticmethod
    def _remember(cache: OrderedDict[str, Any], digest: str, value: Any, limit: int) -> None:
        cache[digest] = value
        cache.move_to_end(digest)
        while len(cache) > limit:
            cache.popitem(last=False)


def _cache_limit(token: Any) -> float:
    """The monotonic time at which the token expires, if the registry says (never cache a
    token past its own expiry)."""
    expires = token.get("expires_at") if isinstance(token, dict) else None
    if not isinstance(expires, str):
        return float("inf")
    try:
        when = dt.datetime.fromisoformat(expires)
    except ValueError:
        return float("inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return time.monotonic() + (when.timestamp() - time.time())


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _unavailable(reason: str) -> BatonError:
    return Unavailable(f"cannot verify the token: {reason}; try again", code="AUTH_UNAVAILABLE")
