"""The HTTP API of a real engine: Open Inference Protocol V2, records, errors, OpenAPI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server


@pytest.fixture(scope="module")
def server(chaos_bundle: Path, tensor_bundle: Path, baton_env: dict[str, str]) -> Any:
    s = Server([chaos_bundle, tensor_bundle], baton_env, ["--timeout", "2"])
    s.wait_ready()
    yield s
    s.stop()


def rec(action: str = "ok", x: Any = 1.5, **extra: Any) -> dict[str, Any]:
    return {"action": action, "x": x, **extra}


def predict(server: Server, body: Any, model: str = "chaos") -> Any:
    if isinstance(body, bytes | str):
        return server.client.post(f"/v1/models/{model}/predict", content=body)
    return server.client.post(f"/v1/models/{model}/predict", json=body)


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    return body


def violation(resp: Any) -> dict[str, Any]:
    body = assert_error(resp, 422, "CONTRACT_VIOLATION")
    return body["details"]["violations"][0]


# -- Health and metadata -----------------------------------------------------------------

def test_health_and_server_metadata(server: Server) -> None:
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    assert server.client.get("/v2").json()["name"] == "baton"


def test_model_metadata_versioned_and_not(server: Server) -> None:
    meta = server.client.get("/v2/models/rowsum").json()
    assert meta["name"] == "rowsum" and meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, 3]}]
    assert meta["parameters"]["digest"].startswith("sha256:")
    assert server.client.get("/v2/models/rowsum/versions/1.0.0").json() == meta
    assert server.client.get("/v2/models/rowsum/ready").json()["ready"] is True
    assert server.client.get("/v2/models/rowsum/versions/1.0.0/ready").status_code == 200
    assert_error(server.client.get("/v2/models/rowsum/versions/9.9"), 404, "MODEL_NOT_FOUND")


# -- Happy paths -------------------------------------------------------------------------

def test_records_endpoint_scores_each_record_in_order(server: Server) -> None:
    resp = predict(server, [rec(x=1.0), rec(x=-2.5), rec(x=40)])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == "chaos" and body["model_version"] == "1.0.0"
    assert [p["y"] for p in body["predictions"]] == [2.0, -5.0, 80.0]


def test_only_contract_outputs_leave_the_engine(server: Server) -> None:
    resp = predict(server, [rec(x=1.0)])
    assert set(resp.json()["predictions"][0]) == {"y", "pid"}  # the model also sent "debug"


def test_v2_column_may_be_shaped_n_by_1(server: Server) -> None:
    resp = server.client.post("/v2/models/chaos/infer", json={"inputs": [
        {"name": "action", "shape": [2, 1], "datatype": "BYTES", "data": [["ok"], ["ok"]]},
        {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [[1.0], [2.5]]}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [2.0, 5.0]


def test_v2_infer_on_a_records_contract_takes_columns(server: Server) -> None:
    resp = server.client.post("/v2/models/chaos/infer", json={"id": "r1", "inputs": [
        {"name": "action", "shape": [2], "datatype": "BYTES", "data": ["ok", "ok"]},
        {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"] == "r1"
    y = next(o for o in body["outputs"] if o["name"] == "y")
    assert y == {"name": "y", "shape": [2], "datatype": "FP64", "data": [2.0, 4.0]}


@pytest.mark.parametrize("data", [[1, 2, 3, 4, 5, 6.5], [[1, 2, 3], [4, 5, 6.5]]])
def test_v2_infer_tensor_flat_or_nested(server: Server, data: list[Any]) -> None:
    resp = server.client.post("/v2/models/rowsum/versions/1.0.0/infer", json={"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP64", "data": data}]})
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    assert out == {"name": "sum", "shape": [2, 1], "datatype": "FP64", "data": [6.0, 15.5]}


def test_v2_outputs_filter(server: Server) -> None:
    resp = server.client.post("/v2/models/chaos/infer", json={
        "inputs": [{"name": "action", "shape": [1], "datatype": "BYTES", "data": ["ok"]},
                   {"name": "x", "shape": [1], "datatype": "FP64", "data": [3]}],
        "outputs": [{"name": "y"}]})
    assert [o["name"] for o in resp.json()["outputs"]] == ["y"]


# -- Bad input: every case gets a precise error and the engine keeps serving --------------

def test_malformed_json(server: Server) -> None:
    assert_error(predict(server, b'[{"action": "ok", "x": 1'), 400, "INVALID_JSON")
    assert_error(server.client.post("/v2/models/rowsum/infer", content=b"{nope"), 400,
                 "INVALID_JSON")


def test_body_must_be_a_list_of_records(server: Server) -> None:
    assert_error(predict(server, {"action": "ok", "x": 1}), 400, "BAD_SHAPE")
    assert_error(predict(server, []), 400, "EMPTY_REQUEST")


def test_wrong_type_names_record_field_expected_and_got(server: Server) -> None:
    v = violation(predict(server, [rec(), rec(x="1.5")]))
    assert (v["record"], v["field"], v["got"]) == (1, "x", "1.5")
    assert "float" in v["expected"]


def test_bool_is_not_a_number(server: Server) -> None:
    v = violation(predict(server, [rec(x=True)]))
    assert (v["record"], v["field"], v["got"]) == (0, "x", True)


def test_out_of_range_and_unknown_category(server: Server) -> None:
    v = violation(predict(server, [rec(x=101)]))
    assert (v["field"], v["got"]) == ("x", 101) and "100.0" in v["expected"]
    v = violation(predict(server, [rec(action="dance")]))
    assert (v["field"], v["got"]) == ("action", "dance") and "'ok'" in v["expected"]


def test_missing_and_null_fields(server: Server) -> None:
    v = violation(predict(server, [{"action": "ok"}]))
    assert (v["record"], v["field"]) == (0, "x") and "missing" in v["message"]
    v = violation(predict(server, [rec(x=None)]))
    assert (v["field"], v["got"]) == ("x", None) and "not null" in v["expected"]


def test_unknown_field_rejected_by_default(server: Server) -> None:
    v = violation(predict(server, [rec(colour="red")]))
    assert (v["record"], v["field"], v["got"]) == (0, "colour", "red")


def test_integer_beyond_64_bits_gets_a_json_error(serve: Callable[..., Server],
                                                  tmp_path: Path) -> None:
    from tests.conftest import write_bundle

    bundle = write_bundle(tmp_path / "ints", name="ints", code='''
    class Model:
        def predict(self, inputs):
            return {"n": list(inputs["n"])}
    ''', contract='''
    [contract]
    kind = "records"
    [[contract.inputs]]
    name = "n"
    type = "integer"
    [[contract.outputs]]
    name = "n"
    type = "integer"
    ''')
    server = serve([bundle])
    v = violation(predict(server, b'[{"n": 99999999999999999999}]', model="ints"))
    assert v["field"] == "n" and str(v["got"]) == "99999999999999999999"


def test_nan_and_infinity_are_refused(server: Server) -> None:
    assert_error(predict(server, b'[{"action": "ok", "x": NaN}]'), 400, "INVALID_JSON")
    v = violation(predict(server, b'[{"action": "ok", "x": 1e999}]'))
    assert v["field"] == "x"
    resp = server.client.post("/v2/models/rowsum/infer", content=b'{"inputs": [{"name": "x",'
                              b' "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 1e999]}]}')
    assert_error(resp, 422, "CONTRACT_VIOLATION")


def test_tensor_of_the_wrong_shape(server: Server) -> None:
    def infer(inp: dict[str, Any]) -> Any:
        return server.client.post("/v2/models/rowsum/infer", json={"inputs": [inp]})

    v = violation(infer({"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}))
    assert v["field"] == "x" and v["got"] == [2, 2]
    v = violation(infer({"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3]}))
    assert "holds 3" in v["message"]
    v = violation(infer({"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a"] * 3}))
    assert v["got"] == "BYTES"
    v = violation(infer({"name": "y", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}))
    assert v["field"] == "y"
    assert_error(server.client.post("/v2/models/rowsum/infer", json={"inputs": []}), 400,
                 "EMPTY_REQUEST")
    assert_error(server.client.post("/v2/models/rowsum/infer", json={"in": []}), 400,
                 "BAD_REQUEST")


def test_unknown_model_route_and_method(server: Server) -> None:
    assert_error(predict(server, [rec()], model="nope"), 404, "MODEL_NOT_FOUND")
    assert_error(server.client.post("/v2/models/nope/infer", json={}), 404, "MODEL_NOT_FOUND")
    assert_error(server.client.get("/v3/anything"), 404, "NOT_FOUND")
    assert_error(server.client.get("/v1/models/chaos/predict"), 405, "METHOD_NOT_ALLOWED")


def test_records_endpoint_on_a_tensor_model_points_to_v2(server: Server) -> None:
    body = assert_error(predict(server, [{"x": 1}], model="rowsum"), 400, "WRONG_ENDPOINT")
    assert body["details"]["endpoint"] == "/v2/models/rowsum/infer"


def test_exception_inside_the_model_is_a_500_with_its_message(server: Server) -> None:
    body = assert_error(predict(server, [rec(action="raise", x=7)]), 500, "MODEL_ERROR")
    assert "ValueError: boom: the model refused x=7.0" in body["error"]
    assert "Traceback" not in body["error"]
    assert predict(server, [rec()]).status_code == 200


def test_model_error_in_a_merged_batch_fails_only_its_own_request(server: Server) -> None:
    import concurrent.futures as cf

    bodies = [[rec(x=i)] for i in range(20)] + [[rec(action="raise")]]
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: predict(server, b), bodies))
    assert [r.status_code for r in results[:20]] == [200] * 20
    assert [r.json()["predictions"][0]["y"] for r in results[:20]] == [2.0 * i for i in range(20)]
    assert results[20].status_code == 500


def test_output_contract_violation(server: Server) -> None:
    body = assert_error(predict(server, [rec(action="bad_output")]), 500,
                        "OUTPUT_CONTRACT_VIOLATION")
    v = body["details"]["violations"][0]
    assert (v["field"], v["got"], v["record"]) == ("y", 1000.0, 0)


def test_openapi_is_generated_from_the_contracts(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    schema = doc["paths"]["/v1/models/chaos/predict"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["items"]
    assert schema["properties"]["x"] == {"type": "number", "minimum": -100.0, "maximum": 100.0}
    assert schema["properties"]["action"]["enum"][0] == "ok"
    assert schema["additionalProperties"] is False
    assert "/v2/models/rowsum/infer" in doc["paths"]
    assert "/v1/models/rowsum/predict" not in doc["paths"]


# -- Per-server settings -----------------------------------------------------------------

def test_oversized_body_gets_413(serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--max-body-bytes", "200")
    body = assert_error(predict(server, [rec()] * 20), 413, "PAYLOAD_TOO_LARGE")
    assert body["details"]["limit"] == 200
    assert predict(server, [rec()]).status_code == 200


def test_unknown_fields_can_be_ignored(serve: Callable[..., Server], chaos_bundle: Path) -> None:
    server = serve([chaos_bundle], "--unknown-fields", "ignore")
    resp = predict(server, [rec(x=2, colour="red")])
    assert resp.status_code == 200 and resp.json()["predictions"][0]["y"] == 4.0
