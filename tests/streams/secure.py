"""Brokers with passwords and TLS, started by the tests on free ports (stopped by PID).

The shared brokers on the standard ports are never touched: each class here writes its own
configuration into the test's folder. Certificates come from ``trustme``: one authority
that signs the brokers' and the client's certificates, and a second, unrelated one (what a
client that trusts the wrong authority holds).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.streams.brokers import PrivateBroker

USER = "baton-svc"
#: Passwords that must never show up in a log, an error or an API answer.
PASSWORD = "Tr0ub4dor-s3cret-pw"


@dataclass(frozen=True)
class Pki:
    """PEM files: the authority, the broker's certificate and key, a client's, a rogue CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, rogue = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("baton-client@example.test")
    paths = {name: folder / f"{name}.pem" for name in
             ("ca", "server_cert", "server_key", "client_cert", "client_key", "rogue_ca")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    rogue.cert_pem.write_to_path(str(paths["rogue_ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return Pki(**paths)


class TlsRedis(PrivateBroker):
    """TLS only (no plain port), client certificates required, one ACL user; the default
    user is off, so nothing gets in without the user's password."""

    name = "redis-server-tls"

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki

    def command(self) -> list[str]:
        p = self.pki
        return ["redis-server", "--bind", "127.0.0.1", "--port", "0",
                "--tls-port", str(self.port), "--tls-cert-file", str(p.server_cert),
                "--tls-key-file", str(p.server_key), "--tls-ca-cert-file", str(p.ca),
                "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--user", "default", "off",
                "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"]


class TlsMosquitto(PrivateBroker):
    """An MQTT listener that speaks only TLS and wants a user and password."""

    name = "mosquitto-tls"

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki

    def command(self) -> list[str]:
        passwords = self.workdir / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD],
                       check=True, capture_output=True, timeout=30)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {passwords}\nuser root\n"
                        f"cafile {self.pki.ca}\ncertfile {self.pki.server_cert}\n"
                        f"keyfile {self.pki.server_key}\n")
        return ["mosquitto", "-c", str(conf)]


class TlsNats(PrivateBroker):
    """NATS with JetStream, TLS with client certificates verified, one user."""

    name = "nats-server-tls"

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki

    def command(self) -> list[str]:
        p = self.pki
        conf = self.workdir / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.workdir / "js"}" }}\n'
            f'tls {{ cert_file: "{p.server_cert}", key_file: "{p.server_key}", '
            f'ca_file: "{p.ca}", verify: true, timeout: 5 }}\n'
            f'authorization {{ user: "{USER}", password: "{PASSWORD}" }}\n')
        return ["/usr/sbin/nats-server", "-c", str(conf)]


class TlsTerminator:
    """127.0.0.1:port speaks TLS (the test's certificate; client certificates required when
    ``client_ca`` is given) and forwards the plain bytes to 127.0.0.1:target.

    For brokers too heavy to run twice with a TLS configuration (RabbitMQ) or without TLS
    of their own (Tansu): the client under test does a real handshake, verifies a real
    certificate and then talks to the real broker.
    """

    def __init__(self, pki: Pki, target: int = 0, client_ca: Path | None = None) -> None:
        """Listens (port known) at once; ``target`` may be set until ``start``: a broker
        that must advertise this port starts after it is known."""
        self.target = target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        if client_ca is not None:
            self.context.load_verify_locations(client_ca)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TlsTerminator:
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        client = self.context.wrap_socket(raw, server_side=True,
                                          do_handshake_on_connect=False)
        try:
            client.do_handshake()
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:  # a failed handshake (the point of some tests) or no broker
            client.close()
            return
        client.settimeout(None)
        upstream.settimeout(None)
        with self._lock:
            self._conns += [client, upstream]
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
