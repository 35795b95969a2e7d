"""The engine's OpenAPI document says what the server does: the V2 inputs it requires, the
datatypes it accepts, the binary framing, and the feedback route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.server.handlers import ENGINE_ROUTES
from baton.server.openapi import model_path
from tests.conftest import Server

BODIES: dict[str, list[dict[str, Any]]] = {
    "chaos": [{"name": "action", "shape": [1], "datatype": "BYTES", "data": ["ok"]},
              {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}],
    "rowsum": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}],
}


@pytest.fixture(scope="module")
def server(chaos_bundle: Path, tensor_bundle: Path, baton_env: dict[str, str]) -> Iterator[Server]:
    s = Server([chaos_bundle, tensor_bundle], baton_env, [])
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def doc(server: Server) -> dict[str, Any]:
    resp = server.client.get("/openapi.json")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def infer_schema(doc: dict[str, Any], model: str) -> dict[str, Any]:
    op = doc["paths"][f"/v2/models/{model}/infer"]["post"]
    schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
    return schema


@pytest.mark.parametrize("model", ["chaos", "rowsum"])
def test_v2_inputs_are_required_as_the_server_requires_them(server: Server,
                                                            doc: dict[str, Any],
                                                            model: str) -> None:
    inputs = infer_schema(doc, model)["properties"]["inputs"]
    in_schema = {c["contains"]["properties"]["name"]["const"] for c in inputs["allOf"]}
    assert inputs["minItems"] == len(in_schema)
    required_by_server = set()
    for i, inp in enumerate(BODIES[model]):
        rest = BODIES[model][:i] + BODIES[model][i + 1:]
        resp = server.client.post(f"/v2/models/{model}/infer", json={"inputs": rest})
        code = resp.json()["code"]
        if (resp.status_code, code) in ((422, "CONTRACT_VIOLATION"), (400, "EMPTY_REQUEST")):
            assert code == "EMPTY_REQUEST" or f"missing input {inp['name']!r}" in resp.text
            required_by_server.add(inp["name"])
    assert in_schema == required_by_server == {inp["name"] for inp in BODIES[model]}
    full = server.client.post(f"/v2/models/{model}/infer", json={"inputs": BODIES[model]})
    assert full.status_code == 200, full.text


def test_v2_datatypes_in_the_document_are_those_accepted(server: Server,
                                                         doc: dict[str, Any]) -> None:
    items = infer_schema(doc, "rowsum")["properties"]["inputs"]["items"]["oneOf"]
    listed = items[0]["properties"]["datatype"]["enum"]
    assert listed == ["FP16", "FP32", "FP64"]
    for datatype in ["FP16", "FP32", "FP64", "INT64", "FP128"]:
        body = {"inputs": [{**BODIES["rowsum"][0], "datatype": datatype}]}
        status = server.client.post("/v2/models/rowsum/infer", json=body).status_code
        assert status == (200 if datatype in listed else 422), datatype


def test_v2_binary_framing_is_documented(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v2/models/rowsum/versions/1.0.0/infer"]["post"]
    assert "application/octet-stream" in op["requestBody"]["content"]
    assert op["parameters"][0]["name"] == "Inference-Header-Content-Length"
    outputs = infer_schema(doc, "rowsum")["properties"]["outputs"]["items"]
    assert outputs["properties"]["name"] == {"enum": ["sum"]}
    assert "binary_data" in outputs["properties"]["parameters"]["properties"]


def test_the_feedback_route_is_documented_where_it_answers(server: Server,
                                                           doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/models/chaos/feedback"]["post"]
    label = op["requestBody"]["content"]["application/json"]["schema"]["items"]
    assert label["required"] == ["id", "label"]
    assert label["properties"]["label"] == {"type": "number", "minimum": -200.0,
                                            "maximum": 200.0}
    resp = server.client.post("/v1/models/chaos/feedback", json=[{"id": "no-1", "label": 1.0}])
    assert resp.status_code == 200 and resp.json()["unknown"] == ["no-1"]
    assert set(resp.json()) == set(op["responses"]["200"]["content"]["application/json"][
        "schema"]["properties"])
    # A tensor model takes no labels: its route answers 400, and the document leaves it out.
    assert "/v1/models/rowsum/feedback" not in doc["paths"]
    resp = server.client.post("/v1/models/rowsum/feedback", json=[{"id": "a", "label": 1}])
    assert resp.status_code == 400 and resp.json()["code"] == "FEEDBACK_UNAVAILABLE"


def test_every_documented_engine_path_answers(server: Server, doc: dict[str, Any]) -> None:
    for path, ops in doc["paths"].items():
        for method in ops:
            resp = server.client.request(method.upper(), path, json=BODIES.get(
                path.split("/")[3], []) if method == "post" else None)
            assert resp.status_code not in (404, 405), (method, path, resp.text)


def test_every_route_of_the_table_is_documented(doc: dict[str, Any]) -> None:
    """Static routes by their path; a model's routes once per served model and version
    path (chaos takes records and labels, rowsum tensors: between them every route)."""
    versions = {"chaos": "1.0.0", "rowsum": "1.0.0"}
    listed = set(doc["paths"])
    for route in ENGINE_ROUTES.static.values():
        assert route.path in listed, route.path
        assert set(doc["paths"][route.path]) == {m.lower() for m in route.methods}
    for family in ENGINE_ROUTES.families:
        for route in family.routes:
            paths = {model_path(family, name, v, route.path)
                     for name, version in versions.items()
                     for v in ((None, version) if family.versions else (None,))}
            assert paths & listed, (family.prefix, route.path)


def test_every_documented_path_is_a_route_of_the_table(doc: dict[str, Any]) -> None:
    for path, ops in doc["paths"].items():
        match = ENGINE_ROUTES.resolve(path)
        assert match is not None and match.route is not None, path
        assert {m.upper() for m in ops} <= set(match.route.methods), path
