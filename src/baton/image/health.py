"""The image's HEALTHCHECK: ``GET /v2/health/ready`` on the engine's own port (stdlib only,
so a probe costs one interpreter start and no Baton import)."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def probe() -> int:
    port = os.environ.get("BATON_PORT") or "8000"
    tls = bool(os.environ.get("BATON_TLS_CERT"))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/health/ready"
    # Loopback to our own server: its certificate names the service, not 127.0.0.1.
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as reply:
            return 0 if reply.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(probe())
