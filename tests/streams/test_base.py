"""Stream URLs: parsed once, credentials never shown, bad ones refused as stream errors."""

from __future__ import annotations

import pytest

from baton.streams.base import StreamError, parse_url, redact_url


def test_credentials_are_decoded_for_the_client_and_hidden_everywhere_else() -> None:
    url = parse_url("amqp://guest:s%40cret@127.0.0.1:5672/orders?vhost=prod")
    assert (url.username, url.password, url.host, url.port) == ("guest", "s@cret",
                                                                 "127.0.0.1", 5672)
    assert url.name == "orders" and url.option("vhost", "/") == "prod"
    assert url.redacted == "amqp://guest:***@127.0.0.1:5672/orders?vhost=prod"
    assert redact_url("kafka://127.0.0.1:9092/t") == "kafka://127.0.0.1:9092/t"


@pytest.mark.parametrize(("raw", "code"), [
    ("redis://127.0.0.1:notaport/s", "BAD_STREAM_URL"),
    ("redis://127.0.0.1:99999/s", "BAD_STREAM_URL"),
    ("pulsar://user:secret@127.0.0.1/t", "UNKNOWN_SCHEME"),
])
def test_a_bad_url_is_a_stream_error_that_shows_no_password(raw: str, code: str) -> None:
    with pytest.raises(StreamError) as err:
        parse_url(raw)
    assert err.value.code == code and "secret" not in err.value.message


def test_a_missing_client_library_is_a_clear_error_when_the_url_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its client a stream could only fail forever: say so at start instead."""
    from baton.streams.connectors import kafka

    monkeypatch.setattr(kafka, "CLIENT", ("baton_no_such_client", "no-such-client"))
    with pytest.raises(StreamError) as err:
        parse_url("kafka://127.0.0.1:9092/t")
    assert err.value.code == "CLIENT_MISSING" and "no-such-client" in err.value.message
    assert parse_url("redis://127.0.0.1:6379/s").name == "s"  # installed: fine


@pytest.mark.parametrize(("raw", "says"), [
    ("nats://127.0.0.1:4222/s?ack_wait=soon", "?ack_wait='soon' must be a number >= 0"),
    ("redis://127.0.0.1:6379/s?db=one", "?db='one' must be a whole number >= 0"),
    ("kafka://127.0.0.1:9092/t?start=first", "must be one of earliest, latest"),
    ("redis://127.0.0.1:6379/s?grop=g", "unknown option ?grop= for redis:// (known: ca, cert, "),
    ("file://in.jsonl?timeout=3", "unknown option ?timeout= for file:// (known: key)"),
])
def test_a_bad_option_is_refused_when_the_url_is_read(raw: str, says: str) -> None:
    with pytest.raises(StreamError) as err:
        parse_url(raw)
    assert err.value.code == "BAD_STREAM_URL" and says in err.value.message


def test_every_option_a_connector_reads_is_declared() -> None:
    """Each connector's OPTIONS, which parse_url checks against, lists exactly what it
    reads: its own options, plus the shared credential and TLS vocabulary of
    baton.streams.security (read there, for every connector) that it takes in."""
    import importlib
    import re
    from pathlib import Path

    from baton.streams import base, security

    shared = {name: set(getattr(security, name)) for name in
              ("PASSWORD_FROM", "TOKEN_FROM", "TLS_SWITCH", "TLS_FILES")}
    read: dict[str, set[str]] = {}
    modules = {"files": "file", "redis_streams": "redis", "nats_jetstream": "nats",
               "rabbitmq": "amqp", "mqtt": "mqtt", "kafka": "kafka"}
    folder = Path(base.__file__).parent / "connectors"
    for module, scheme in modules.items():
        # the connector's module and its own helpers beside it (_kafka_client.py, ...)
        code = "\n".join(p.read_text() for p in [folder / f"{module}.py",
                                                 *sorted(folder.glob(f"_{module}_*.py"))])
        read[scheme] = set(re.findall(
            r'(?:option|options\.get|number\([a-z.]+,)\(?\s*"(\w+)"', code)) | set(
            re.findall(r'"(\w+)" in url\.options', code))
        for name, options in shared.items():
            if f"**{name}" in code:
                read[scheme] |= options
    declared = {scheme: set(importlib.import_module(base.CONNECTORS[scheme]).OPTIONS)
                for scheme in modules.values()}
    assert read == declared
    for secure, plain in security.SECURE_SCHEMES.items():  # same connector, same options
        assert base.CONNECTORS[secure] == base.CONNECTORS[plain]
