"""``baton serve``: open bundles, build their environments, run the HTTP engine.

Authentication is on whenever a token file is given or the engine follows a registry;
an engine with neither that listens beyond loopback says so, loudly, at start.

This module imports little: it checks the options, binds the ports and starts each local
model's worker template, then imports the engine (:mod:`baton.cli.serve_engine`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from baton import tracing
from baton.deployment import (
    DeploymentSpec,
    EngineSpec,
    LabelsSpec,
    RegistrySpec,
    ShadowSpec,
    StreamSpec,
    load_deployments,
    parse_canary,
)
from baton.errors import BatonError, SettingsError
from baton.logs import configure as configure_logs
from baton.server.tls import tls_options
from baton.server.tokens import TokenFile
from baton.serving.opening import Opened, open_ahead
from baton.settings import Settings

log = logging.getLogger("baton.serve")


@dataclass(frozen=True)
class Listening:
    """What ``baton serve`` has checked and bound before it imports the engine."""

    sock: socket.socket
    msock: socket.socket | None  # --metrics-port
    grpc_port: int  # 0: none
    tokens: TokenFile | None
    tls: dict[str, Any]  # uvicorn's TLS options
    auth: bool
    started: float  # time.perf_counter() at the start


def engine_spec(bundles: tuple[str, ...], registry: str | None, stage: str, poll: float,
                canary: str | None, shadow: str | None, input_url: str | None,
                output_url: str | None, dead_letter: str | None, group: str | None,
                max_batch: int, deployment: Path | None, labels: str | None) -> EngineSpec:
    """``baton serve``'s options as the engine spec the library builds from."""
    deployments = [DeploymentSpec(ref) for ref in bundles]
    if deployment is not None:
        deployments += load_deployments(deployment)
    stream = None
    if input_url or output_url or (dead_letter and not labels):
        stream = _stream_option(input_url, output_url, dead_letter, group, max_batch)
    return EngineSpec(
        tuple(deployments), RegistrySpec(registry, stage, poll) if registry else None,
        parse_canary(canary) if canary else None, ShadowSpec(shadow) if shadow else None,
        stream, _labels_option(labels, dead_letter, group, max_batch) if labels else None)


def _stream_option(input_url: str | None, output_url: str | None, dead_letter: str | None,
                   group: str | None, max_batch: int) -> StreamSpec:
    missing = [n for n, v in (("--input", input_url), ("--output", output_url),
                              ("--dead-letter", dead_letter)) if not v]
    if not input_url or not output_url or not dead_letter:
        raise SettingsError(f"a stream binding needs --input, --output and --dead-letter; "
                            f"missing {', '.join(missing)}")
    return StreamSpec(input_url, output_url, dead_letter, group or "", max_batch)


def _labels_option(labels: str, dead_letter: str | None, group: str | None,
                   max_batch: int) -> LabelsSpec:
    if not dead_letter:
        raise SettingsError("a labels binding needs --dead-letter (where labels that cannot "
                            "be attached go); missing --dead-letter")
    return LabelsSpec(labels, dead_letter, f"{group}-labels" if group else "", max_batch)


def run_server(opts: EngineSpec, settings: Settings) -> None:
    configure_logs(settings.log_level, settings.log_format)
    tracing.configure(settings)  # tracing asked for without OpenTelemetry: exit 2, here
    started = time.perf_counter()
    # A bad token file or certificate stops serve before anything else (exit 2).
    tokens = TokenFile(settings.tokens_file).load() if settings.tokens_file else None
    tls = tls_options(settings)
    # Listen first: a port in use is a clear error before any environment is built, and
    # --port 0 gets a free port whose number is printed.
    sock = _listen(settings.host, settings.port)
    port = sock.getsockname()[1]
    msock = _listen(settings.host, settings.metrics_port) if settings.metrics_port else None
    grpc_port = _grpc_port(settings, port, msock) if settings.grpc_port else 0
    auth = tokens is not None or opts.registry is not None
    if not auth and _exposed(sock):
        _warn_open(settings.host, port)
    opened = _open_ahead(opts, settings)
    try:
        from baton.cli.serve_engine import serve_engine

        serve_engine(opts, settings, opened, Listening(sock, msock, grpc_port, tokens, tls,
                                                       auth, started))
    finally:  # an engine that did not start leaves no template behind (a closed one: no-op)
        _abandon(opened)


def _open_ahead(opts: EngineSpec, settings: Settings) -> dict[str, Opened]:
    """The models' imports, the longest part of a start, run beside the engine's own: each
    local bundle deployed is verified, its environment checked and its worker template
    started before the engine (HTTP stack, monitoring, prediction log) is imported. An
    engine following a registry opens what it serves after the registry's gate."""
    opened: dict[str, Opened] = {}
    try:
        for d in opts.deployments if opts.registry is None else ():
            if d.bundle not in opened and Path(d.bundle).exists():
                opened[d.bundle] = open_ahead(d.bundle, settings)
    except BaseException:
        _abandon(opened)
        raise
    return opened


def _abandon(opened: dict[str, Opened]) -> None:
    for o in opened.values():
        o.template.abandon()


def _grpc_port(settings: Settings, port: int, msock: socket.socket | None) -> int:
    """The gRPC port, checked at start as the HTTP one is: grpcio and a recent enough
    protobuf installed, the port free (the gRPC server binds it when the HTTP one starts)."""
    if settings.grpc_port in (port, msock.getsockname()[1] if msock else 0):
        raise SettingsError(f"--grpc-port {settings.grpc_port} is also the HTTP or the "
                            "metrics port: give gRPC a port of its own",
                            details={"field": "grpc_port"})
    # The engine forks its workers only to exec them: gRPC's fork handlers have nothing to
    # do there, and log a line at each fork while its threads are busy. Set before it loads.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import baton.server.grpc_server  # noqa: F401
    except ImportError as exc:
        missing = f"{exc.name} is not installed"
    except Exception as exc:  # protobuf's VersionError: older than the generated code
        if type(exc).__name__ != "VersionError":
            raise
        missing = str(exc).split(". ")[0]
    else:
        probe = _listen(settings.host, settings.grpc_port)
        try:
            probe.listen()  # bound is not enough: another bound socket may share the port
        except OSError as exc:
            raise BatonError(f"cannot listen on {settings.host}:{settings.grpc_port}: "
                             f"{exc.strerror or exc}", code="SERVER_START_FAILED") from None
        finally:
            probe.close()
        return settings.grpc_port
    raise SettingsError(f"--grpc-port needs grpcio and protobuf ({missing}): pip install "
                        "'baton[grpc]'", code="GRPC_MISSING", details={"field": "grpc_port"})


def _exposed(sock: socket.socket) -> bool:
    """Whether the socket listens beyond this machine (anything but a loopback address)."""
    address = str(sock.getsockname()[0]).split("%")[0]
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return True


def _warn_open(host: str, port: int) -> None:
    bar = "!" * 78
    click.secho("\n".join([
        bar,
        f"!! WARNING: this engine listens on {host}:{port} WITHOUT AUTHENTICATION.",
        "!! Anyone who can reach this port can predict, post feedback (and so skew the",
        "!! accuracy figures) and read /metrics, /v1/stats and the dashboard.",
        "!! Give it tokens (--tokens FILE; see 'baton engine-tokens add'), serve from a",
        "!! registry (--registry URL), or bind it to 127.0.0.1.",
        bar]), fg="red", bold=True, err=True)
    log.warning("listening on %s:%d without authentication: anyone who reaches the port "
                "can predict, post feedback and read metrics", host, port)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port`` 0: a free one), for uvicorn to serve on."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise BatonError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         code="SERVER_START_FAILED",
                         details={"host": host, "port": port}) from None
    return sock


