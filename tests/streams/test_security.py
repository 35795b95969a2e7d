"""Credentials and TLS options of stream URLs, checked when the URL is read.

The brokers themselves (TLS handshakes, refused passwords) are in
tests/security/test_stream_tls.py; here is what parse_url decides on its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from baton.streams.base import StreamError, parse_url, redact_url
from baton.streams.connectors._support import explain
from tests.streams.secure import Pki, make_pki

SECRET = "pa55-w0rd-never-shown"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def refused(raw: str) -> StreamError:
    with pytest.raises(StreamError) as err:
        parse_url(raw)
    assert err.value.code == "BAD_STREAM_URL", err.value.message
    assert SECRET not in err.value.message and SECRET not in str(err.value.details)
    return err.value


@pytest.mark.parametrize(("raw", "option", "says"), [
    (f"redis://127.0.0.1/s?password={SECRET}", "password", "redis://USER:PASSWORD@HOST"),
    (f"amqps://u@127.0.0.1/q?Password={SECRET}", "Password", "?password_env=VAR"),
    (f"nats://127.0.0.1/s?token={SECRET}", "token", "?token_env=VAR or ?token_file=PATH"),
    (f"kafka://127.0.0.1/t?sasl_password={SECRET}", "sasl_password", "user-info part"),
])
def test_a_secret_in_the_query_string_is_refused_and_never_repeated(
        raw: str, option: str, says: str) -> None:
    err = refused(raw)
    assert err.details["option"] == option and "never goes in the query string" in err.message
    assert says in err.message and "***" in err.details["url"]


def test_a_password_comes_from_the_url_an_environment_variable_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TEST_PW", SECRET)
    (tmp_path / "pw").write_text(SECRET + "\n")  # as `echo secret > pw` writes it
    for raw in (f"rediss://alice:{SECRET}@127.0.0.1/s",
                "rediss://alice@127.0.0.1/s?password_env=BATON_TEST_PW",
                f"rediss://alice@127.0.0.1/s?password_file={tmp_path / 'pw'}"):
        url = parse_url(raw)
        assert (url.username, url.password, url.tls) == ("alice", SECRET, True)
        assert SECRET not in repr(url) and SECRET not in url.redacted


def test_a_nats_token_comes_from_a_variable_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TEST_TOKEN", SECRET)
    (tmp_path / "token").write_text(SECRET)
    for query in ("token_env=BATON_TEST_TOKEN", f"token_file={tmp_path / 'token'}"):
        url = parse_url(f"nats://127.0.0.1/s?{query}")
        assert url.token == SECRET and url.password is None and SECRET not in repr(url)


@pytest.mark.parametrize(("query", "option", "says"), [
    ("password_env=BATON_TEST_UNSET", "password_env", "environment variable is not set"),
    ("password_env=BATON_TEST_EMPTY", "password_env", "environment variable is empty"),
    ("password_file={tmp}/missing", "password_file", "the file does not exist"),
    ("password_file={tmp}", "password_file", "is a folder, not a file"),
    ("password_file={tmp}/empty", "password_file", "the file is empty"),
    ("password_env=BATON_TEST_EMPTY&password_file={tmp}/empty", "password_env",
     "both given"),
])
def test_a_secret_that_cannot_be_read_is_a_clear_error_at_start(
        query: str, option: str, says: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_TEST_UNSET", raising=False)
    monkeypatch.setenv("BATON_TEST_EMPTY", "")
    (tmp_path / "empty").write_text("\n")
    err = refused(f"redis://alice@127.0.0.1/s?{query.format(tmp=tmp_path)}")
    assert err.details["option"] == option and says in err.message, err.message


def test_a_password_given_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TEST_PW", "other")
    err = refused(f"redis://alice:{SECRET}@127.0.0.1/s?password_env=BATON_TEST_PW")
    assert "give it once" in err.message and "alice:***@" in err.message


@pytest.mark.parametrize(("raw", "says"), [
    ("redis://127.0.0.1/s?ca={ca}", "use rediss://"),
    ("amqp://127.0.0.1/q?ca={ca}", "use amqps://"),
    ("mqtt://127.0.0.1/t?cert={cert}&key={key}", "use mqtts://"),
    ("nats://127.0.0.1/s?ca={ca}", "add ?tls=true"),
    ("kafka://127.0.0.1/t?ca={ca}&tls=false", "add ?tls=true"),
])
def test_certificates_on_a_plain_connection_are_refused_not_ignored(
        raw: str, says: str, pki: Pki) -> None:
    """A CA given without TLS would otherwise leave the connection silently unencrypted."""
    err = refused(raw.format(ca=pki.ca, cert=pki.client_cert, key=pki.client_key))
    assert "is for TLS connections" in err.message and says in err.message


def test_the_tls_switch_is_the_secure_scheme_where_there_is_one() -> None:
    err = refused("redis://127.0.0.1/s?tls=true")
    assert err.details["option"] == "tls" and "use rediss://" in err.message


def test_tls_files_are_checked_and_loaded_when_the_url_is_read(
        pki: Pki, tmp_path: Path) -> None:
    url = parse_url(f"nats://127.0.0.1/s?tls=true&ca={pki.ca}&cert={pki.client_cert}"
                    f"&key={pki.client_key}")
    assert url.tls and url.tls_context is not None
    assert parse_url("nats://127.0.0.1/s").tls_context is None
    (tmp_path / "not-pem").write_text("hello")
    for query, option, says in (
            (f"ca={tmp_path}/nope.pem", "ca", "the file does not exist"),
            (f"ca={tmp_path}/not-pem", "ca", "is not a PEM certificate authority"),
            (f"cert={pki.client_cert}&key={pki.server_key}", "cert",
             "cannot load the client certificate"),
            (f"key={pki.client_key}", "key", "?key= needs ?cert=")):
        err = refused(f"rediss://127.0.0.1/s?{query}")
        assert err.details["option"] == option and says in err.message, err.message


def test_an_encrypted_client_key_is_refused_instead_of_prompting(tmp_path: Path) -> None:
    """OpenSSL would ask for the passphrase on the terminal: a server would hang at start."""
    cert = trustme.CA().issue_cert("client.test")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"passphrase"))
    (tmp_path / "key.pem").write_bytes(encrypted)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    err = refused(f"mqtts://127.0.0.1/t?cert={tmp_path}/cert.pem&key={tmp_path}/key.pem")
    assert "encrypted with a passphrase" in err.message


@pytest.mark.parametrize(("raw", "shown"), [
    (f"rediss://alice:{SECRET}@127.0.0.1:6380/s?ca=/x.pem",
     "rediss://alice:***@127.0.0.1:6380/s?ca=/x.pem"),
    (f"redis://:{SECRET}@127.0.0.1/s", "redis://:***@127.0.0.1/s"),
    (f"nats://127.0.0.1/s?token={SECRET}&stream=S", "nats://127.0.0.1/s?token=***&stream=S"),
    (f"redis://alice:{SECRET}", "redis://alice:***"),  # "@host" forgotten: still hidden
    ("kafka://127.0.0.1:9092/t?password_env=PW", "kafka://127.0.0.1:9092/t?password_env=PW"),
])
def test_redact_url_hides_every_password(raw: str, shown: str) -> None:
    assert redact_url(raw) == shown


def test_a_bad_port_does_not_echo_what_may_be_a_password() -> None:
    err = refused(f"redis://alice:{SECRET}/s")
    assert "the port must be a number" in err.message


@pytest.mark.parametrize(("query", "user", "says"), [
    ("", "alice:pw@", "need a SASL mechanism: add ?sasl="),
    ("sasl=PLAIN", "", "?sasl=PLAIN needs a user and password"),
    ("sasl=SCRAM-SHA-1", "alice:pw@", "must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
])
def test_kafka_sasl_needs_both_a_mechanism_and_credentials(
        query: str, user: str, says: str) -> None:
    assert says in refused(f"kafka://{user}127.0.0.1:9092/t?{query}").message


@pytest.mark.parametrize(("query", "expected"), [
    ("", {"security.protocol": "PLAINTEXT"}),
    ("tls=true&ca={ca}", {"security.protocol": "SSL", "ssl.ca.location": "{ca}",
                          "ssl.endpoint.identification.algorithm": "https"}),
    ("sasl=PLAIN", {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                    "sasl.username": "alice", "sasl.password": SECRET}),
    ("sasl=SCRAM-SHA-256&tls=true",
     {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
      "sasl.username": "alice", "sasl.password": SECRET,
      "ssl.endpoint.identification.algorithm": "https"}),
    ("sasl=SCRAM-SHA-512&tls=true&ca={ca}&cert={cert}&key={key}",
     {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
      "sasl.username": "alice", "sasl.password": SECRET, "ssl.ca.location": "{ca}",
      "ssl.certificate.location": "{cert}", "ssl.key.location": "{key}",
      "ssl.endpoint.identification.algorithm": "https"}),
])
def test_a_kafka_url_maps_to_librdkafka_security_settings(
        query: str, expected: dict[str, str], pki: Pki) -> None:
    """Tansu (the Kafka broker of the tests) cannot authenticate clients with SASL, so the
    mapping is checked here, and librdkafka itself must accept every setting."""
    from confluent_kafka import Producer

    from baton.streams.connectors.kafka import security_config

    files = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
    user = f"alice:{SECRET}@" if "sasl" in query else ""
    url = parse_url(f"kafka://{user}127.0.0.1:9092/t?{query.format(**files)}")
    config = security_config(url)
    assert config == {k: v.format(**files) for k, v in expected.items()}
    Producer({"bootstrap.servers": "127.0.0.1:9092", **config})  # an unknown name raises


def test_nats_takes_one_way_to_authenticate(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TEST_TOKEN", "t")
    err = refused(f"nats://alice:{SECRET}@127.0.0.1/s?token_env=BATON_TEST_TOKEN")
    assert "one way to authenticate" in err.message
    assert "needs its user" in refused(f"nats://:{SECRET}@127.0.0.1/s").message
    err = refused(f"nats://127.0.0.1/s?creds={pki.ca.parent}/missing.creds")
    assert err.details["option"] == "creds"


def test_connector_errors_scrub_secrets_and_name_the_tls_cause() -> None:
    url = parse_url(f"redis://alice:{SECRET}@127.0.0.1/s")
    said = explain(f"AUTH {SECRET} refused: Connection reset by peer", url)
    assert SECRET not in said and "use rediss://" in said
    tls = parse_url("nats://127.0.0.1/s?tls=true")
    assert "?ca=PATH" in explain("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
                                 "failed", tls)
    assert "?cert=PATH&key=PATH" in explain("tlsv13 alert certificate required", tls)


def test_a_client_error_holding_the_password_is_scrubbed_from_stats_and_log(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A client that raises outside the connector's own errors, with the password in its
    text (a fault no real broker produces on demand): last_error and the log hide it."""
    import asyncio
    import time

    from baton.streams.binding import StreamBinding
    from baton.streams.connectors import redis_streams
    from baton.streams.pipeline import StreamPipeline

    async def leaky_open(self: redis_streams.RedisSource) -> None:
        raise RuntimeError(f"cannot AUTH with {self.url.password}")

    monkeypatch.setattr(redis_streams.RedisSource, "open", leaky_open)
    monkeypatch.setenv("BATON_TEST_PW", SECRET)
    binding = StreamBinding("m", "redis://alice@127.0.0.1:1/in?password_env=BATON_TEST_PW",
                            "", "redis://127.0.0.1:1/dead")
    pipeline = StreamPipeline(binding, lambda: None)

    async def run() -> str | None:
        task = asyncio.create_task(pipeline.run())
        deadline = time.monotonic() + 30
        while pipeline.stats.last_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await pipeline.stop()
        await task
        return pipeline.stats.last_error

    last_error = asyncio.run(run())
    assert last_error == "open input: unexpected RuntimeError: cannot AUTH with ***"
    assert SECRET not in caplog.text and "cannot AUTH with ***" in caplog.text
