"""Stream connectors with credentials and TLS, against real brokers started by this module.

Redis, NATS and Mosquitto run as extra instances on free ports with their own TLS and
password configuration (certificates from trustme); RabbitMQ and Tansu (Kafka) are reached
through a TLS terminator of the test's own in front of the real broker (a second RabbitMQ
is too heavy here, Tansu has no usable TLS listener), so the client's handshake and
certificate checks are real. The shared brokers are never reconfigured.

Kafka SASL is not tested against a broker: Tansu cannot create users while authentication
is on (tests/streams/test_security.py checks the librdkafka settings instead).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from baton.streams.base import OutRecord, StreamError, open_sink, open_source
from tests.conftest import Server, records_contract, run_baton, write_bundle
from tests.streams.brokers import Tansu, require_service
from tests.streams.conftest import Aio
from tests.streams.engines import answers
from tests.streams.secure import (
    PASSWORD,
    USER,
    Pki,
    TlsMosquitto,
    TlsNats,
    TlsRedis,
    TlsTerminator,
    make_pki,
)

PASSWORD_ENV = "BATON_TEST_STREAM_PASSWORD"
GUEST_ENV = "BATON_TEST_AMQP_PASSWORD"  # the shared RabbitMQ's guest user
WRONG = "Wr0ng-" + uuid.uuid4().hex  # a wrong password: as secret as a right one
AUTH_REFUSED = {"redis": "invalid username-password pair", "nats": "Authorization Violation",
                "mqtt": "Not authorized", "amqp": "ACCESS_REFUSED"}
SECURE_FORM = {"redis": "rediss://", "nats": "?tls=true", "mqtt": "mqtts://",
               "amqp": "amqps://", "kafka": "?tls=true"}


@dataclass(frozen=True)
class Secure:
    """One broker that wants TLS (and a password, where it checks one): its URLs."""

    name: str
    scheme: str
    port: int
    pki: Pki
    user: str | None = USER
    client_cert: bool = True
    tls_switch: str = ""
    password_env: str = PASSWORD_ENV

    def url(self, stream: str, *, password: str | None = None, ca: Path | None = None,
            cert: bool = True) -> str:
        """The password from the environment unless one is given for the user-info part."""
        auth, query = "", [self.tls_switch + f"ca={ca or self.pki.ca}"]
        if self.user is not None:
            auth = f"{self.user}:{password}@" if password else f"{self.user}@"
            if not password:
                query.append(f"password_env={self.password_env}")
        if cert and self.client_cert:
            query.append(f"cert={self.pki.client_cert}&key={self.pki.client_key}")
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}/{stream}?{'&'.join(query)}"

    def plain_url(self, stream: str) -> str:
        """The same broker without TLS (what a forgotten ``s`` or ``?tls=true`` gives)."""
        plain = {"rediss": "redis", "amqps": "amqp", "mqtts": "mqtt"}.get(self.scheme,
                                                                           self.scheme)
        auth = f"{self.user}@" if self.user else ""
        query = f"?password_env={self.password_env}" if self.user else ""
        return f"{plain}://{auth}127.0.0.1:{self.port}/{stream}{query}"


class Fleet:
    """The brokers of this module, each started the first time a test asks for it."""

    def __init__(self, root: Path, pki: Pki) -> None:
        self.root, self.pki = root, pki
        self.started: dict[str, Secure] = {}
        self.stops: list[Callable[[], None]] = []

    def get(self, name: str) -> Secure:
        if name not in self.started:
            self.started[name] = getattr(self, f"_{name}")()
        return self.started[name]

    def _redis(self) -> Secure:
        broker = TlsRedis(self.root / "redis", self.pki).start()
        self.stops.append(broker.stop)
        return Secure("redis", "rediss", broker.port, self.pki)

    def _nats(self) -> Secure:
        broker = TlsNats(self.root / "nats", self.pki).start()
        self.stops.append(broker.stop)
        return Secure("nats", "nats", broker.port, self.pki, tls_switch="tls=true&")

    def _mqtt(self) -> Secure:
        broker = TlsMosquitto(self.root / "mqtt", self.pki).start()
        self.stops.append(broker.stop)
        return Secure("mqtt", "mqtts", broker.port, self.pki, client_cert=False)

    def _amqp(self) -> Secure:
        require_service("amqp")
        proxy = TlsTerminator(self.pki, 5672, client_ca=self.pki.ca).start()
        self.stops.append(proxy.stop)
        return Secure("amqp", "amqps", proxy.port, self.pki, user="guest",
                      password_env=GUEST_ENV)

    def _kafka(self) -> Secure:
        proxy = TlsTerminator(self.pki, client_ca=self.pki.ca)
        broker = Tansu(self.root / "tansu", advertised=proxy.port).start()
        self.stops += [broker.stop, proxy.stop]
        proxy.target = broker.port
        proxy.start()
        return Secure("kafka", "kafka", proxy.port, self.pki, user=None,
                      tls_switch="tls=true&")

    def stop(self) -> None:
        for stop in reversed(self.stops):
            stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fleet(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("brokers"), pki)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def aio() -> Iterator[Aio]:
    runner = Aio()
    yield runner
    runner.close()


@pytest.fixture(autouse=True)
def passwords(monkeypatch: pytest.MonkeyPatch, aio: Aio) -> Iterator[None]:
    """The passwords the URLs read with ?password_env=; test queues removed afterwards."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(GUEST_ENV, "guest")
    yield
    if _amqp_queues:
        aio.run(_delete_amqp_queues())


@pytest.fixture(params=["redis", "nats", "mqtt", "amqp", "kafka"])
def secure(request: pytest.FixtureRequest, fleet: Fleet) -> Secure:
    return fleet.get(request.param)


_amqp_queues: list[str] = []


async def _delete_amqp_queues() -> None:
    """The test queues live on the shared RabbitMQ: remove them (best effort)."""
    import aio_pika

    queues, _amqp_queues[:] = list(_amqp_queues), []
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)


def fresh(secure: Secure) -> str:
    name = f"baton-tls-{uuid.uuid4().hex[:10]}"
    if secure.name == "amqp":
        _amqp_queues.append(name)
    return name


async def round_trip(url: str, count: int = 5, patience: float = 60) -> list[tuple[Any, bytes]]:
    """Write ``count`` records with the sink and read them back with the source."""
    source, sink = open_source(url, group="baton-tls"), open_sink(url)
    try:
        await source.open()  # first: an MQTT session only gets what comes after it
        await sink.open()
        await sink.write([OutRecord(f"k{i}", b'{"n": %d}' % i) for i in range(count)])
        got: list[Any] = []
        deadline = time.monotonic() + patience
        while len(got) < count and time.monotonic() < deadline:
            got += await source.read(count, 0.5)
        await source.ack(got)
        return [(m.key, m.value) for m in got]
    finally:
        await source.close()
        await sink.close()


def refusal(aio: Aio, url: str) -> StreamError:
    """The error opening a source on ``url`` ends with (it must end, and say why)."""
    async def attempt() -> None:
        source = open_source(url, group="baton-tls")
        try:
            await source.open()
        finally:
            await source.close()

    with pytest.raises(StreamError) as err:
        aio.run(attempt(), timeout=60)
    return err.value


def test_records_flow_with_credentials_over_tls(secure: Secure, aio: Aio) -> None:
    """Source and sink, password from the environment, client certificate where the broker
    demands one; the broker saw TLS only (it has no plain port)."""
    got = aio.run(round_trip(secure.url(fresh(secure))))
    assert sorted(got) == [(f"k{i}", b'{"n": %d}' % i) for i in range(5)]


@pytest.mark.parametrize("name", ["redis", "nats", "mqtt", "amqp"])
def test_a_wrong_password_is_a_clear_error_that_shows_no_password(
        name: str, fleet: Fleet, aio: Aio) -> None:
    secure = fleet.get(name)
    err = refusal(aio, secure.url(fresh(secure), password=WRONG))
    assert AUTH_REFUSED[name] in err.message, err.message
    assert f"{secure.user}:***@127.0.0.1:{secure.port}" in err.message
    assert WRONG not in err.message and WRONG not in str(err.details)


def test_an_untrusted_certificate_authority_is_a_clear_tls_error(
        secure: Secure, aio: Aio) -> None:
    err = refusal(aio, secure.url(fresh(secure), ca=secure.pki.rogue_ca))
    assert "certificate verify failed" in err.message, err.message
    assert "?ca=PATH" in err.message and PASSWORD not in err.message


def test_a_plain_connection_to_a_tls_port_fails_clearly(secure: Secure, aio: Aio) -> None:
    started = time.monotonic()
    err = refusal(aio, secure.plain_url(fresh(secure)))
    assert "TLS" in err.message and SECURE_FORM[secure.name] in err.message, err.message
    assert PASSWORD not in err.message
    assert time.monotonic() - started < 30, "a refusal must not wait out a long timeout"


@pytest.mark.parametrize("name", ["redis", "nats", "amqp", "kafka"])
def test_a_missing_client_certificate_is_named(name: str, fleet: Fleet, aio: Aio) -> None:
    secure = fleet.get(name)
    err = refusal(aio, secure.url(fresh(secure), cert=False))
    assert "client certificate" in err.message, err.message


# -- a real engine: secrets from the URL, a variable and a file, shown nowhere -------------

MODEL = '''
class Model:
    def predict(self, inputs):
        return {"double": [2 * x for x in inputs["x"]]}
'''


@pytest.fixture(scope="module")
def doubler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundles") / "doubler", name="doubler",
                        code=MODEL, contract=records_contract(inputs={"x": "float"},
                                                              outputs={"double": "float"}))


def _wait(check: Callable[[], bool], what: str, server: Server, patience: float = 90) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if check():
            return
        assert server.proc.poll() is None, f"baton serve exited:\n{server.output()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {patience:.0f}s\n{server.output()[-3000:]}")


def _everything_shown(server: Server, baton_env: dict[str, str]) -> str:
    """Every place a stream URL is rendered: /v1/stats, /v1/models, `baton status`, logs."""
    shown = [server.client.get(path).text for path in ("/v1/stats", "/v1/models")]
    status = run_baton("status", "--url", server.url, env=baton_env, timeout=60)
    return "\n".join([*shown, status.stdout, status.stderr, server.output()])


def test_an_engine_never_shows_a_stream_password(
        serve: Callable[..., Server], doubler: Path, fleet: Fleet, aio: Aio,
        baton_env: dict[str, str], tmp_path: Path) -> None:
    """Input: password in a file; output: in the URL itself; dead letters: in a variable.
    Records flow over TLS, and no rendering of the engine shows any of them."""
    redis, nats = fleet.get("redis"), fleet.get("nats")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    streams = [f"baton-tls-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    inp = redis.url(streams[0]).replace(f"password_env={PASSWORD_ENV}",
                                        f"password_file={tmp_path / 'password'}")
    out = redis.url(streams[1], password=PASSWORD)
    dead = nats.url(streams[2])
    server = serve([doubler], "--input", inp, "--output", out, "--dead-letter", dead,
                   env={PASSWORD_ENV: PASSWORD})

    async def feed() -> None:
        sink = open_sink(inp)
        await sink.open()
        await sink.write([OutRecord("a", b'{"x": 1.5}'), OutRecord("b", b'{"x": "bad"}')])
        await sink.close()

    aio.run(feed())
    scored = _read_all(aio, out, 1)
    dead_letters = _read_all(aio, dead, 1)
    assert [(k, json.loads(v)["output"]) for k, v in scored] == [("a", {"double": 3.0})]
    assert [(k, json.loads(v)["stage"]) for k, v in dead_letters] == [("b", "contract")]
    shown = _everything_shown(server, baton_env)
    assert PASSWORD not in shown
    assert f"{USER}:***@127.0.0.1:{redis.port}/{streams[1]}" in shown  # masked, not dropped
    assert f"password_file={tmp_path / 'password'}" in shown


def test_a_refused_stream_names_its_url_but_not_the_password(
        serve: Callable[..., Server], doubler: Path, fleet: Fleet,
        baton_env: dict[str, str]) -> None:
    """The engine keeps retrying a binding whose broker refuses the password, and is not
    ready meanwhile; the error it shows (stats, readiness, status, log) names the URL,
    masked, and the broker's reason."""
    redis = fleet.get("redis")
    streams = [f"baton-tls-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    server = serve([doubler], "--input", redis.url(streams[0], password=WRONG),
                   "--output", redis.url(streams[1]), "--dead-letter", redis.url(streams[2]),
                   env={PASSWORD_ENV: PASSWORD}, ready=False)  # it never is: only live
    _wait(lambda: answers(server, "/v2/health/live"), "the engine live", server)

    def refused() -> bool:
        stats = server.client.get("/v1/models").json()["streams"][0]
        return AUTH_REFUSED["redis"] in (stats.get("last_error") or "")

    _wait(refused, "the refusal shown in /v1/models", server)
    ready = server.client.get("/v2/health/ready")
    assert ready.status_code == 503 and AUTH_REFUSED["redis"] in ready.text
    shown = _everything_shown(server, baton_env)
    assert WRONG not in shown and PASSWORD not in shown
    assert f"{USER}:***@127.0.0.1:{redis.port}/{streams[0]}" in shown


def _read_all(aio: Aio, url: str, count: int, patience: float = 90) -> list[Any]:
    async def read() -> list[Any]:
        source = open_source(url, group=f"reader-{uuid.uuid4().hex[:6]}")
        await source.open()
        try:
            got: list[Any] = []
            deadline = time.monotonic() + patience
            while len(got) < count and time.monotonic() < deadline:
                got += await source.read(count, 0.5)
            return [(m.key, m.value) for m in got]
        finally:
            await source.close()

    return aio.run(read(), timeout=patience + 30)

