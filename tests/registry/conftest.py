"""Registry fixtures: every test runs twice, on SQLite and on a real PostgreSQL database.

Each test module gets one fresh database per back end (migrated by Alembic, as
``baton registry serve`` does); tests share it, so every test names its own models and
users with a random suffix (:func:`unique`).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from baton.bundle.archive import BuiltArchive, build_archive, bundle_digest
from baton.bundle.scaffold import scaffold
from baton.registry.app import create_app, subprocess_check_runner
from baton.registry.audit import checkpoint_path
from baton.registry.blobs import BlobStore
from baton.registry.db import Database
from baton.registry.service import Actor, Registry
from baton.trust import SigningKey, generate_signing_key

BACKENDS = ["sqlite", "postgresql"]
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"


def unique(prefix: str) -> str:
    """A name no other test in the shared database uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def pg_admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not answering on 127.0.0.1:5432 ({exc}). The registry "
                    "tests need it: start it with scripts/ensure-services.sh (make test and "
                    ".ci/run do), or see the project's shared INFRA notes.", pytrace=False)


@contextlib.contextmanager
def new_pg_database(prefix: str = "baton_test") -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped afterwards. Engines are disposed
    at each test's teardown; FORCE also ends the connections of a server (`baton registry
    serve`, an engine) that a failed test could not stop."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.format(db=name)
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate_registry(url: str) -> None:
    """Bring a registry database up to date, as ``baton registry serve`` does."""
    db = Database(url)
    try:
        db.migrate()
    finally:
        db.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated registry database for this module, on each back end."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('registry-db') / 'registry.db'}"
        migrate_registry(url)
        yield url
        return
    with new_pg_database() as url:
        migrate_registry(url)
        yield url


_KEYS: dict[str, tuple[Path, SigningKey]] = {}


def database_key(database_url: str, tmp_path_factory: pytest.TempPathFactory,
                 ) -> tuple[Path, SigningKey]:
    """The signing key of a database (its audit chain has one signer), made once; the
    signed audit head checkpoint lives next to it. A plain cache rather than a fixture, so
    that modules importing ``make_registry`` need nothing else."""
    if database_url not in _KEYS:
        path = tmp_path_factory.mktemp("registry-key") / "signing.key"
        _KEYS[database_url] = path, generate_signing_key(path)
    return _KEYS[database_url]


@pytest.fixture
def key_file(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return database_key(database_url, tmp_path_factory)[0]


@pytest.fixture
def signing_key(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return database_key(database_url, tmp_path_factory)[1]


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def open_database(database_url: str) -> Iterator[Callable[[], Database]]:
    """Factory: a new engine on this module's database, disposed after the test."""
    opened: list[Database] = []

    def open_() -> Database:
        db = Database(database_url)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.dispose()


class StubCheck:
    """Stands in for ``baton check`` in tests about the rules rather than the check itself
    (the real check runs in test_lifecycle.py and test_cli.py); records what it was given."""

    def __init__(self, passed: bool = True) -> None:
        self.passed = passed
        self.checked: list[str] = []

    def __call__(self, bundle_dir: Path) -> dict[str, Any]:
        self.checked.append(bundle_digest(bundle_dir))
        return {"passed": self.passed, "failed_stage": None if self.passed else "model",
                "stub": True}


@pytest.fixture
def real_check(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The check runner ``baton registry serve`` uses: a real ``baton report --check-out``
    subprocess (the check, then the handoff report on the worker it started)."""
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    return subprocess_check_runner(baton_home)


MakeRegistry = Callable[..., Registry]


@pytest.fixture
def make_registry(open_database: Callable[[], Database], tmp_path: Path, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> MakeRegistry:
    """Factory: a Registry on this module's database (signing with its key) and a blob
    folder of this test."""
    key_file, signing_key = database_key(database_url, tmp_path_factory)

    def make(*, approvals: int = 1, check: Any = None, **options: Any) -> Registry:
        """``options``: more of Registry's keyword arguments (``token_max_days``...)."""
        return Registry(open_database(), BlobStore(tmp_path / "blobs"), signing_key,
                        approvals_required=approvals,
                        check_runner=check if check is not None else StubCheck(),
                        head_file=checkpoint_path(key_file), **options)

    return make


@pytest.fixture
def registry(make_registry: MakeRegistry) -> Registry:
    return make_registry()


MakeArchive = Callable[..., BuiltArchive]


@pytest.fixture
def make_archive(tmp_path: Path) -> MakeArchive:
    """Factory: the archive of a ``baton init`` bundle named ``name`` at ``version``.

    ``variant`` changes the model's code (so the content and digest change);
    ``wrong_expected`` breaks samples/expected.json so that ``baton check`` fails.
    The same arguments always give the same digest.
    """

    def make(name: str, version: str = "0.1.0", *, variant: str = "",
             wrong_expected: bool = False) -> BuiltArchive:
        folder = scaffold(tmp_path / "bundles" / secrets.token_hex(4), name)
        _edit(folder / "baton.toml", 'version = "0.1.0"', f'version = "{version}"')
        if variant:
            with (folder / "model" / "predict.py").open("a") as f:
                f.write(f"\n# variant {variant}\n")
        if wrong_expected:
            _edit(folder / "samples" / "expected.json", "0.75", "0.7")
        return build_archive(folder, tmp_path / "archives" / secrets.token_hex(4))

    return make


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


# -- Actors and stages -------------------------------------------------------------------

def actor(role: str) -> Actor:
    return Actor(unique(role), role)


def to_staging(reg: Registry, ref: str, by: Actor | None = None) -> None:
    """draft -> validated (through the registry's check) -> staging."""
    op = by or actor("operator")
    assert reg.validate(op, ref)["stage"] == "validated"
    assert reg.promote(op, ref, "staging")["stage"] == "staging"


def approve(reg: Registry, ref: str, n: int = 1) -> None:
    for _ in range(n):
        reg.decide(actor("approver"), ref, "approve", "looks good")


# -- A real registry API on a real uvicorn server ------------------------------------------

class ApiServer:
    """``create_app(registry)`` under uvicorn in a thread, on a socket bound to a free port."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(registry), log_level="warning", access_log=False,
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="registry-api", daemon=True)
        self.clients: list[httpx.Client] = []

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the registry API server thread died"
            assert time.monotonic() < deadline, "the registry API did not start in 30 s"
            time.sleep(0.01)
        return self

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        c = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60)
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
        assert not self.thread.is_alive(), "the registry API server did not stop"


@pytest.fixture
def serve_api() -> Iterator[Callable[[Registry], ApiServer]]:
    """Factory: a started API server for a registry; stopped after the test."""
    servers: list[ApiServer] = []

    def start(registry: Registry) -> ApiServer:
        server = ApiServer(registry)
        servers.append(server)
        return server.start()

    yield start
    for s in servers:
        s.stop()


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    return body
