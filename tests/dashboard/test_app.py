"""The dashboard's ASGI app on its own: pages, assets, headers, and the proxy's refusals."""

from __future__ import annotations

import asyncio
import concurrent.futures
from types import SimpleNamespace
from typing import Any

import httpx

from baton.dashboard import Dashboard
from baton.dashboard.app import STATIC
from baton.dashboard.proxy import followed_by
from tests.conftest import free_port


def request(engine: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to a fresh Dashboard, on an event loop of its own thread (the browser
    tests' Playwright keeps a loop in the main thread)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=Dashboard(lambda: followed_by(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return await client.request(method, path, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(30)


LOCAL = SimpleNamespace(source=None)


def following(url: str) -> Any:
    return SimpleNamespace(source=SimpleNamespace(client=SimpleNamespace(url=url),
                                                  stage="production"))


def test_page_and_assets_are_served_with_their_types_and_a_strict_policy() -> None:
    for path in ("/ui", "/ui/"):
        page = request(LOCAL, "GET", path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.content == (STATIC / "index.html").read_bytes()
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
    script = request(LOCAL, "GET", "/ui/static/live.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert request(LOCAL, "GET", "/ui/static/dashboard.css").headers[
        "content-type"].startswith("text/css")
    head = request(LOCAL, "HEAD", "/ui/static/charts.js")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == (STATIC / "charts.js").stat().st_size


def test_anything_but_the_assets_is_not_found() -> None:
    for path in ("/ui/static/../app.py", "/ui/static/", "/ui/app.py", "/ui/index.html",
                 "/ui/static/nope.js", "/ui/api", "/ui/static/%2e%2e/proxy.py"):
        resp = request(LOCAL, "GET", path)
        assert resp.status_code == 404, path
        assert resp.json()["code"] == "NOT_FOUND"
    post = request(LOCAL, "POST", "/ui/static/main.js")
    assert post.status_code == 405 and post.json()["code"] == "METHOD_NOT_ALLOWED"


def test_without_a_registry_the_page_is_told_so_and_nothing_is_forwarded() -> None:
    assert request(LOCAL, "GET", "/ui/api/registry").json() == {"url": None, "stage": None}
    resp = request(LOCAL, "GET", "/ui/api/registry/whoami")
    assert resp.status_code == 404 and resp.json()["code"] == "NO_REGISTRY"


def test_an_unreachable_registry_is_a_clear_502() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    resp = request(following(url), "GET", "/ui/api/registry/whoami",
                   headers={"authorization": "Bearer bt_x"})
    assert resp.status_code == 502
    body = resp.json()
    assert body["code"] == "REGISTRY_UNREACHABLE" and url in body["error"]
    info = request(following(url), "GET", "/ui/api/registry").json()
    assert info == {"url": url, "stage": "production"}
