"""The gRPC listener of ``baton serve --grpc-port``: a ``grpc.aio`` server on uvicorn's loop.

It binds the HTTP server's host, takes the same TLS certificate and key (and client
authority), the same body limit (as its largest message) and the same guard, and serves
:class:`~baton.server.grpc_service.InferenceService` over the engine HTTP serves. ``baton
serve`` starts it before the models start and stops it, draining its calls, before they
close (:class:`baton.cli.serve_engine.EngineServer`).

This module needs the ``grpc`` extra (grpcio, protobuf): import it only when a gRPC port is
asked for.
"""

from __future__ import annotations

import logging

import grpc

from baton.errors import BatonError
from baton.server.auth import Guard
from baton.server.grpc_service import InferenceService
from baton.serving.service import Engine
from baton.settings import Settings

log = logging.getLogger("baton.server.grpc")


class GrpcEndpoint:
    """One gRPC server on ``settings.host:port``; :meth:`start` and :meth:`stop` run on the
    event loop that serves HTTP."""

    def __init__(self, engine: Engine, guard: Guard | None, settings: Settings,
                 port: int) -> None:
        self.service = InferenceService(engine, guard)
        self.settings = settings
        host = settings.host
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.tls = settings.tls_cert is not None and settings.tls_key is not None
        self.server: grpc.aio.Server | None = None

    def _credentials(self) -> grpc.ServerCredentials:
        s = self.settings
        assert s.tls_cert is not None and s.tls_key is not None
        client_ca = s.tls_client_ca.read_bytes() if s.tls_client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
            root_certificates=client_ca, require_client_auth=client_ca is not None)

    async def start(self) -> None:
        """Bind and serve; ``SERVER_START_FAILED`` when the port cannot be bound."""
        server = grpc.aio.server(options=[
            # The HTTP body limit, as the largest request; answers are not limited.
            ("grpc.max_receive_message_length", self.settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # A port another server holds is an error, not a silent share.
            ("grpc.so_reuseport", 0),
        ])
        server.add_generic_rpc_handlers((self.service.handler(),))
        try:
            if self.tls:
                server.add_secure_port(self.address, self._credentials())
            else:
                server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise BatonError(f"cannot listen for gRPC on {self.address}: {exc}",
                             code="SERVER_START_FAILED",
                             details={"address": self.address}) from None
        await server.start()
        self.server = server
        log.info("gRPC (Open Inference Protocol) on %s%s", self.address,
                 " with TLS" if self.tls else "")

    async def stop(self) -> None:
        """Refuse new calls, and give those in flight up to ``drain_timeout`` to finish."""
        if self.server is not None:
            await self.server.stop(self.settings.drain_timeout)
            self.server = None
