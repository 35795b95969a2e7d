"""A real HTTP webhook on 127.0.0.1 for alert tests: it records what it receives, and can
fail its first requests or hold every request until the test releases it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    def __init__(self, fail_first: int = 0, hold: bool = False) -> None:
        self.url = ""
        self.fail_first = fail_first
        self.attempts: list[dict[str, Any]] = []  # every request, failed ones too
        self.received: list[dict[str, Any]] = []  # the requests answered with success
        self.entered = threading.Event()  # a request has arrived
        self.release = threading.Event()  # held requests may answer
        if not hold:
            self.release.set()


@contextmanager
def running(hook: Webhook) -> Iterator[Webhook]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            hook.attempts.append(body)
            hook.entered.set()
            hook.release.wait(120)
            failing = len(hook.attempts) <= hook.fail_first
            self.send_response(500 if failing else 204)
            self.end_headers()
            if not failing:
                hook.received.append(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    hook.url = f"http://127.0.0.1:{httpd.server_address[1]}/alerts"
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        yield hook
    finally:
        hook.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` (from a thread other than the event loop's) until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.01)


async def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """The same, awaited from the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.01)
