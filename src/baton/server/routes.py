"""The route table: which paths the engine answers, with which methods, handlers and scopes.

A route is data: its path, methods, handler, the token scope it needs and what the OpenAPI
document says of it. Handlers take a :class:`Request` and *return* a :class:`Reply`; a
:class:`~baton.errors.BatonError` they raise becomes its JSON error at the edge.

Two kinds of path, both resolved without scanning the table:

* static paths (``/v2/health/ready``, ``/metrics``): one dict lookup;
* per-model families (``/v2/models/{name}[/versions/{version}]/...`` and
  ``/v1/models/{name}/...``): one ``split`` of the path, a dict lookup of the family by its
  first two segments and one of the route by what follows the model name. A path resolved
  before is one dict lookup: the last 1,024 are kept (a client repeats its few paths;
  junk paths only make the cache start again).

The same table gives the guard its per-path scopes (:meth:`RouteTable.scope_patterns`) and
the OpenAPI document its paths, so the three cannot disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from baton.server.body import Receive, Scope, read_body

if TYPE_CHECKING:
    from baton.serving.service import Engine

#: A route anyone may call, without a token.
OPEN = "open"
JSON = b"application/json"
Header = tuple[bytes, bytes]


@dataclass(slots=True)
class Reply:
    """What a handler answers: sent as is, with ``content-length`` added. (A slotted
    dataclass: built once per request, it costs less than a NamedTuple with defaults.)"""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[Header, ...] = ()


@dataclass(slots=True)
class Request:
    """One HTTP request as a handler sees it; ``name`` and ``version`` come from a model
    route's path (empty and None on a static route)."""

    engine: Engine
    scope: Scope
    receive: Receive
    max_body_bytes: int
    #: Whether the engine asks for tokens (the OpenAPI document then says so).
    auth: bool
    name: str = ""
    version: str | None = None

    def body(self) -> Awaitable[bytes]:
        """The request body, inflated if it was sent compressed, within the size limit
        (``await req.body()``; the reader's own coroutine, without a frame around it)."""
        return read_body(self.scope, self.receive, self.max_body_bytes)


Handler = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    """One path (static), or one path under a model (``path`` relative to the model:
    ``""``, ``"ready"``, ``"infer"``) and everything the server says about it."""

    path: str
    methods: tuple[str, ...]
    handler: Handler
    #: The token scope a caller needs (:data:`OPEN`: none).
    scope: str
    summary: str
    #: The OpenAPI operation's name for a per-model route, for the document to describe
    #: it from the model's contract; a static route is documented from ``responses``.
    operation: str = ""
    #: Status -> (description, JSON Schema of the body or None), for a static route.
    responses: dict[int, tuple[str, dict[str, Any] | None]] = field(default_factory=dict)
    #: The media type of a static route's answer, for the document.
    media: str = "application/json"
    #: Whether this engine answers the route at all (e.g. ``/metrics`` with metrics off),
    #: for the document; None: always.
    offered: Callable[[Engine], bool] | None = None

    @property
    def allow(self) -> str:
        """The ``Allow`` header of a 405 on this route."""
        return ", ".join(self.methods)


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    """The routes under ``{prefix}/{name}`` (and ``{prefix}/{name}/versions/{v}`` when
    ``versions``) by what follows the name."""

    prefix: str
    routes: tuple[Route, ...]
    versions: bool = False
    #: Look the model up before the route and the method (a wrong model is 404 first).
    model_first: bool = False
    #: One scope for everything under the prefix, even paths no route answers (None:
    #: each route's own scope, other paths none in particular).
    scope: str | None = None

    def by_rest(self) -> dict[str, Route]:
        return {r.path: r for r in self.routes}


class Match(NamedTuple):
    """A path resolved: its route (None: the family answers no such path) and model."""

    route: Route | None
    family: ModelRoutes | None = None
    name: str = ""
    version: str | None = None


class RouteTable:
    """Static routes and model families; :meth:`resolve` maps a path to its route."""

    def __init__(self, static: list[Route], families: list[ModelRoutes]) -> None:
        self.static = {r.path: r for r in static}
        self.families = families
        self._families: dict[str, tuple[ModelRoutes, dict[str, Route]]] = {}
        for fam in families:
            if fam.scope is not None and any(r.scope != fam.scope for r in fam.routes):
                raise ValueError(f"every route under {fam.prefix} needs {fam.scope!r}")
            self._families[fam.prefix] = (fam, fam.by_rest())
        self._seen: dict[str, Match | None] = {}

    def resolve(self, path: str) -> Match | None:
        """The route of a normalised path (no trailing slash, ``/`` for the root): a
        static route, a family's route, or a family's miss; None: no route at all."""
        try:
            return self._seen[path]
        except KeyError:
            pass
        found = self._resolve(path)
        if len(self._seen) >= 1024:
            self._seen.clear()
        self._seen[path] = found
        return found

    def _resolve(self, path: str) -> Match | None:
        route = self.static.get(path)
        if route is not None:
            return Match(route)
        parts = path.split("/")  # ["", "v2", "models", name, ...]
        if len(parts) < 4:
            return None
        found = self._families.get(f"/{parts[1]}/{parts[2]}")
        if found is None:
            return None
        fam, routes = found
        rest, version = parts[4:], None
        if fam.versions and len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        return Match(routes.get("/".join(rest)), fam, parts[3], version)

    def __iter__(self) -> Iterator[Route]:
        yield from self.static.values()
        for fam in self.families:
            yield from fam.routes

    def scope_patterns(self) -> list[tuple[str, str]]:
        """Path pattern -> scope, for :class:`~baton.server.auth.RouteScopes`: ``*`` one
        segment, a trailing ``**`` any number (even none)."""
        out = [(r.path, r.scope) for r in self.static.values()]
        for fam in self.families:
            if fam.scope is not None:
                out.append((f"{fam.prefix}/**", fam.scope))
            else:
                out += [(f"{fam.prefix}/*/{r.path}".rstrip("/"), r.scope) for r in fam.routes]
        return out
