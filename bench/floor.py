"""The floor: the least a Python server can do to answer a V2 infer request.

A raw ASGI callable (no framework), one process, the model called inline on the event loop:
orjson parses the V2 body, numpy builds the array, ``predict_proba`` runs, orjson writes the
V2 response. No validation, no isolation, no batching. Run it with

    FLOOR_MODEL=model.joblib uvicorn floor:app --app-dir bench --loop uvloop \
        --http httptools --no-access-log --port 8002

It answers ``POST /v2/models/<name>/infer`` (any name) and ``GET /v2/health/ready``.
"""

from __future__ import annotations

import os

import joblib
import numpy as np
import orjson

MODEL = joblib.load(os.environ["FLOOR_MODEL"])
NAME = os.environ.get("FLOOR_NAME", "logreg")
_HEADERS = [(b"content-type", b"application/json")]


async def _body(receive) -> bytes:  # noqa: ANN001 - ASGI callables
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send, status: int, body: bytes) -> None:  # noqa: ANN001
    await send({"type": "http.response.start", "status": status,
                "headers": [*_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:  # noqa: ANN001
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if scope["method"] == "POST" and path.endswith("/infer"):
        try:
            req = orjson.loads(await _body(receive))
            inp = req["inputs"][0]
            x = np.asarray(inp["data"], dtype=np.float64).reshape(inp["shape"])
            proba = MODEL.predict_proba(x)
        except Exception as exc:  # a bad request: say why, like a real server would
            await _send(send, 400, orjson.dumps({"error": str(exc)}))
            return
        out = {"model_name": NAME, "outputs": [{
            "name": "predict_proba", "shape": list(proba.shape), "datatype": "FP64",
            "data": proba.reshape(-1)}]}
        await _send(send, 200, orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY))
    elif path in ("/v2/health/ready", "/v2/health/live"):
        await _send(send, 200, b'{"ready":true}')
    else:
        await _send(send, 404, b'{"error":"not found"}')
