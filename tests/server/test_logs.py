"""Logs for IT's pipelines: ``--log-format json`` (one JSON object per line, every line),
request ids echoed in ``X-Request-Id`` and in the log, and ``--access-log``'s one line per
request with the model, version, digest, status, duration and the failing stage."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Server

OK = {"action": "ok", "x": 1.0}


def lines_until(server: Server, done: Callable[[list[str]], bool]) -> list[str]:
    """The server's output lines, once ``done`` holds for them (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [ln for ln in server.output().splitlines() if ln.strip()]
        if done(lines):
            return lines
        assert time.monotonic() < deadline, "\n".join(lines)
        time.sleep(0.05)


def test_json_logs_access_lines_and_request_ids(serve: Callable[..., Server],
                                                chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--log-format", "json", "--access-log")
    given = server.client.post("/v1/models/chaos/predict", json=[OK],
                               headers={"X-Request-Id": "order-42.a:b_c"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "order-42.a:b_c"
    made = server.client.post("/v2/models/chaos/infer", json={"inputs": [
        {"name": "action", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
        {"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]})
    assert made.status_code == 200 and re.fullmatch(r"[0-9a-f]{16}", made.headers["x-request-id"])
    # A header that is not a sane id (spaces, quotes: it would be echoed into logs) is replaced.
    odd = server.client.post("/v1/models/chaos/predict", json=[{**OK, "x": 500.0}],
                             headers={"X-Request-Id": 'x" injected'})
    assert odd.status_code == 422
    odd_id = odd.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", odd_id)

    def parsed(lines: list[str]) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in lines]  # every line is one JSON object

    ids = ("order-42.a:b_c", made.headers["x-request-id"], odd_id)
    records = parsed(lines_until(server, lambda ls: all(
        any(f'"request_id":"{i}"' in ln and "baton.access" in ln for ln in ls) for i in ids)))
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("Baton is serving at" in r["message"] for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "baton.access"}
    first = access["order-42.a:b_c"]
    digest = server.model("chaos")["parameters"]["digest"]
    assert (first["model"], first["version"], first["digest"], first["status"],
            first["method"], first["path"]) == ("chaos", "1.0.0", digest, 200, "POST",
                                                "/v1/models/chaos/predict")
    assert first["duration_ms"] > 0 and "stage" not in first
    assert access[made.headers["x-request-id"]]["path"] == "/v2/models/chaos/infer"
    refused = access[odd_id]
    assert (refused["status"], refused["stage"]) == (422, "contract")


def test_text_logs_name_the_request(serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--access-log")
    r = server.client.post("/v1/models/chaos/predict", json=[OK],
                           headers={"X-Request-Id": "trace-7"})
    assert r.headers["x-request-id"] == "trace-7"
    lines = lines_until(server, lambda ls: any("trace-7" in ln for ln in ls))
    [line] = [ln for ln in lines if "trace-7" in ln]
    assert "baton.access [request trace-7]: POST /v1/models/chaos/predict 200" in line
    assert "Baton is serving at" in server.output()  # the banner stays plain text


def test_no_access_lines_by_default(serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle])
    r = server.client.post("/v1/models/chaos/predict", json=[OK])
    assert r.status_code == 200 and r.headers["x-request-id"]
    # The next request's answer comes after the first one's line would have been written.
    assert server.client.get("/v2/health/live").status_code == 200
    assert "baton.access" not in server.output()
