"""TLS on the engine, with certificate authorities made in the test (trustme): https that a
client trusting the CA reaches and one without it refuses; client certificates required;
the metrics-only port; `baton status` over https with a token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import BATON, free_port, run_baton
from tests.security.engines import (
    SecureServer,
    bearer,
    run_quick,
    secure_servers,
    trusting,
    write_token_file,
)


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_ca: Path
    #: (certificate, key) of a client the client CA signed, and of one it did not.
    client: tuple[str, str]
    stranger: tuple[str, str]


def _pair(issued: trustme.LeafCert, folder: Path, name: str) -> tuple[str, str]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server_ca.cert_pem.write_to_path(folder / "ca.pem")
    client_ca.cert_pem.write_to_path(folder / "client-ca.pem")
    cert, key = _pair(server_ca.issue_cert("127.0.0.1", "localhost"), folder, "server")
    return Pki(folder / "ca.pem", Path(cert), Path(key), folder / "client-ca.pem",
               _pair(client_ca.issue_cert("scraper@example.test"), folder, "client"),
               _pair(other_ca.issue_cert("mallory@example.test"), folder, "stranger"))


@pytest.fixture
def secure_serve(baton_env: dict[str, str]) -> Iterator[Callable[..., SecureServer]]:
    yield from secure_servers(baton_env)


def tls_args(pki: Pki) -> list[str]:
    return ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]


def test_https_engine_is_reached_with_its_ca_and_refused_without(
        secure_serve: Callable[..., SecureServer], chaos_bundle: Path, pki: Pki) -> None:
    server = secure_serve([chaos_bundle], *tls_args(pki), https=True, verify=trusting(pki.ca))
    resp = server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 2.0}])
    assert resp.status_code == 200 and resp.json()["predictions"][0]["y"] == 4.0
    out = server.wait_for_output("Try:")
    assert f"Baton is serving at {server.url}" in out and server.url.startswith("https://")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/v2/health/live")  # the system's CAs do not know it
    with pytest.raises(httpx.RemoteProtocolError):  # plain http is not answered as http
        httpx.get(f"http://127.0.0.1:{server.port}/v2/health/live")
    # An idle keep-alive TLS client (server.client's pooled connection) does not hold up a
    # drained stop: uvicorn would wait for its close_notify (see baton.server.tls_shutdown).
    log = Path(server.log.name)
    assert server.stop() == 0
    assert "Waiting for connections to close" not in log.read_text()


def test_client_certificates_required_by_the_client_ca(
        secure_serve: Callable[..., SecureServer], chaos_bundle: Path, pki: Pki) -> None:
    server = secure_serve([chaos_bundle], *tls_args(pki), "--tls-client-ca",
                          str(pki.client_ca), https=True,
                          verify=trusting(pki.ca, pki.client))
    assert server.client.get("/v2/models/chaos").status_code == 200
    for cert in (None, pki.stranger):
        with httpx.Client(verify=trusting(pki.ca, cert)) as client, \
                pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            client.get(f"{server.url}/v2/health/live")


def test_metrics_port_serves_only_metrics_without_a_token(
        secure_serve: Callable[..., SecureServer], chaos_bundle: Path, pki: Pki,
        tmp_path: Path, baton_env: dict[str, str]) -> None:
    tokens = write_token_file(tmp_path / "tokens.toml", {"ops": (("read",), None, False),
                                                          "app": (("infer",), None, False)})
    mport = free_port()
    server = secure_serve([chaos_bundle], "--tokens", str(tmp_path / "tokens.toml"),
                          "--metrics-port", str(mport))
    assert server.client.post("/v1/models/chaos/predict", json=[{"action": "ok", "x": 1}],
                              headers=bearer(tokens["app"])).status_code == 200
    out = server.wait_for_output("Try:")
    assert f"Metrics for Prometheus (no token): http://127.0.0.1:{mport}/metrics" in out
    with httpx.Client(base_url=f"http://127.0.0.1:{mport}", timeout=30) as scraper:
        metrics = scraper.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'baton_requests_total{' in metrics.text and 'model="chaos"' in metrics.text
        for method, path in (("GET", "/v1/stats"), ("GET", "/v2/health/live"), ("GET", "/ui"),
                             ("POST", "/v1/models/chaos/predict"), ("GET", "/metrics/x"),
                             ("GET", "/ui/api/registry")):
            resp = scraper.request(method, path, headers=bearer(tokens["ops"]))
            assert resp.status_code == 404 and resp.json()["code"] == "NOT_FOUND", path
        assert scraper.post("/metrics").status_code == 405
    # The main port still asks for a token with the read scope.
    assert server.client.get("/metrics").status_code == 401
    assert server.client.get("/metrics", headers=bearer(tokens["app"])).status_code == 403
    assert server.client.get("/metrics", headers=bearer(tokens["ops"])).status_code == 200

    # With TLS, the metrics port speaks it too.
    tport = free_port()
    tls = secure_serve([chaos_bundle], *tls_args(pki), "--metrics-port", str(tport),
                       https=True, verify=trusting(pki.ca))
    assert tls.client.get(f"https://127.0.0.1:{tport}/metrics").status_code == 200


@pytest.mark.parametrize("which", ["cert", "key", "client-ca"])
def test_unusable_tls_files_stop_serve_at_start(chaos_bundle: Path, pki: Pki, tmp_path: Path,
                                                baton_env: dict[str, str], which: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    cert = junk if which == "cert" else pki.cert
    key = junk if which == "key" else pki.key
    extra = ["--tls-client-ca", str(junk)] if which == "client-ca" else []
    r = run_quick([*BATON, "serve", str(chaos_bundle), "--port", "0", "--tls-cert", str(cert),
                   "--tls-key", str(key), *extra], env=baton_env)
    assert r.returncode == 2 and "error [INVALID_TLS]" in r.stderr, r.stderr
    assert str(junk) in r.stderr


def test_status_over_https_with_a_token(secure_serve: Callable[..., SecureServer],
                                        chaos_bundle: Path, pki: Pki, tmp_path: Path,
                                        baton_env: dict[str, str]) -> None:
    tokens = write_token_file(tmp_path / "tokens.toml", {"ops": (("read",), None, False),
                                                          "app": (("infer",), None, False)})
    server = secure_serve([chaos_bundle], *tls_args(pki), "--tokens",
                          str(tmp_path / "tokens.toml"), https=True, verify=trusting(pki.ca))
    env = {**baton_env, "COLUMNS": "250"}
    ok = run_baton("status", "--url", server.url, "--cacert", pki.ca, "--token",
                   tokens["ops"], env=env)
    assert ok.returncode == 0, ok.stderr
    assert any(line.startswith("│ chaos") for line in ok.stdout.splitlines())
    from_env = run_baton("status", "--url", server.url, "--cacert", pki.ca,
                         env={**env, "BATON_TOKEN": tokens["ops"]})
    assert from_env.returncode == 0, from_env.stderr

    none = run_baton("status", "--url", server.url, "--cacert", pki.ca, env=env)
    assert none.returncode == 6 and "error [UNAUTHORIZED]" in none.stderr
    assert "--token" in none.stderr and "Traceback" not in none.stderr
    weak = run_baton("status", "--url", server.url, "--cacert", pki.ca, "--token",
                     tokens["app"], env=env)
    assert weak.returncode == 6 and "error [FORBIDDEN]" in weak.stderr
    untrusted = run_baton("status", "--url", server.url, "--token", tokens["ops"], env=env)
    assert untrusted.returncode == 1 and "ENGINE_UNREACHABLE" in untrusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
