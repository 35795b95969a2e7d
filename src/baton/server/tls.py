"""TLS for the engine's HTTP server: its options, checked before anything starts.

Imported by ``baton serve`` before the HTTP stack (uvicorn, and ssl unless TLS is on); the
protocol that closes idle TLS connections at shutdown is :mod:`baton.server.tls_shutdown`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from baton.errors import SettingsError

if TYPE_CHECKING:
    from baton.settings import Settings


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options, after checking that the files load (exit 2 if not)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return {}
    import ssl

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
