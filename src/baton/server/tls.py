"""TLS for the engine's HTTP server: options checked before anything starts, and a
shutdown that does not wait on idle TLS clients.

uvicorn closes an idle keep-alive connection at shutdown with ``transport.close()``; on a
TLS connection that sends ``close_notify`` and waits up to 30 s for the peer's, which an idle
client (a connection pool, a load balancer) never sends until it next uses the socket. So
a drained engine with one idle TLS client took 30 s to stop. :class:`HttpProtocol` aborts
idle TLS connections instead: nothing is in flight on them, and a busy one still finishes
its response first.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from baton.errors import SettingsError

if TYPE_CHECKING:
    from baton.settings import Settings


class HttpProtocol(HttpToolsProtocol):
    def shutdown(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport.get_extra_info("sslcontext") is not None:
            self.transport.abort()
        else:
            super().shutdown()


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options, after checking that the files load (exit 2 if not)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key fails here instead of prompting for a pass phrase.
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"cannot serve TLS with certificate {settings.tls_cert} and key "
                            f"{settings.tls_key}: {exc} (PEM files; the key unencrypted)",
                            code="INVALID_TLS", details={"field": "tls_cert"}) from None
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert),
                               "ssl_keyfile": str(settings.tls_key)}
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(settings.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"cannot use {settings.tls_client_ca} as the client "
                                f"certificate authority: {exc} (a PEM file)",
                                code="INVALID_TLS",
                                details={"field": "tls_client_ca"}) from None
        options |= {"ssl_ca_certs": str(settings.tls_client_ca),
                    "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options
