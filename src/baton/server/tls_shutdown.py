"""A shutdown that does not wait on idle TLS clients (the engine's HTTP protocol).

uvicorn closes an idle keep-alive connection at shutdown with ``transport.close()``; on a
TLS connection that sends ``close_notify`` and waits up to 30 s for the peer's, which an idle
client (a connection pool, a load balancer) never sends until it next uses the socket. So
a drained engine with one idle TLS client took 30 s to stop. :class:`HttpProtocol` aborts
idle TLS connections instead: nothing is in flight on them, and a busy one still finishes
its response first. (The TLS options themselves: :mod:`baton.server.tls`.)
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpProtocol(HttpToolsProtocol):
    def shutdown(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport.get_extra_info("sslcontext") is not None:
            self.transport.abort()
        else:
            super().shutdown()
