"""V2 as clients use it, on a real engine: tritonclient with its defaults (the binary tensor
data extension both ways), the binary path equal to the JSON path, malformed binary bodies,
datatypes checked against the contract, and ``Allow`` on 405."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import Server, free_port, records_contract, write_bundle
from tests.security.engines import bearer, write_token_file

WORDS_CODE = '''
class Model:
    def predict(self, inputs):
        words = list(inputs["word"])
        return {"upper": [None if w is None or w == "null" else w.upper() for w in words],
                "length": [0 if w is None else len(w) for w in words],
                "long": [w is not None and len(w) > 3 for w in words]}
'''
WORDS_CONTRACT = records_contract(
    inputs={"word": {"type": "string", "nullable": True}},
    outputs={"upper": {"type": "string", "nullable": True}, "length": "integer",
             "long": "boolean"})


@pytest.fixture(scope="module")
def words_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Strings in, strings, integers and booleans out; the word "null" answers null."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "words", name="words",
                        code=WORDS_CODE, contract=WORDS_CONTRACT)


@pytest.fixture(scope="module")
def server(chaos_bundle: Path, tensor_bundle: Path, words_bundle: Path,
           baton_env: dict[str, str]) -> Iterator[Server]:
    s = Server([chaos_bundle, tensor_bundle, words_bundle], baton_env, [])
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def tensor(name: str, value: np.ndarray, datatype: str, binary: bool = True) -> Any:
    inp = triton.InferInput(name, list(value.shape), datatype)
    inp.set_data_from_numpy(value, binary_data=binary)
    return inp


def framed(server: Server, model: str, header: dict[str, Any], *parts: bytes,
           length: int | str | None = None) -> Any:
    """POST a body in the binary extension's framing, by hand (to send malformed ones)."""
    head = json.dumps(header).encode()
    return server.client.post(f"/v2/models/{model}/infer", content=head + b"".join(parts),
                              headers={"Inference-Header-Content-Length":
                                       str(len(head) if length is None else length)})


def fp64(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def strings(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


# -- tritonclient with its defaults -------------------------------------------------------

def test_the_server_announces_the_binary_extension(client: Any) -> None:
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("rowsum")


def test_tritonclient_defaults_on_an_fp64_tensor_model(client: Any) -> None:
    x = np.array([[1.0, 2.0, 3.0], [0.25, -0.5, 1e300]])
    result = client.infer("rowsum", [tensor("x", x, "FP64")])
    assert result.get_output("sum")["parameters"]["binary_data_size"] == 16  # binary answer
    np.testing.assert_array_equal(result.as_numpy("sum"), x.sum(axis=1, keepdims=True))
    versioned = client.infer("rowsum", [tensor("x", x, "FP64")], model_version="1.0.0")
    np.testing.assert_array_equal(versioned.as_numpy("sum"), result.as_numpy("sum"))


def test_tritonclient_defaults_on_a_records_model_with_strings(client: Any) -> None:
    action = np.array([b"ok", b"ok", b"ok"], dtype=object)
    x = np.array([1.5, -2.0, 40.0])
    result = client.infer("chaos", [tensor("action", action, "BYTES"), tensor("x", x, "FP64")])
    np.testing.assert_array_equal(result.as_numpy("y"), [3.0, -4.0, 80.0])
    assert result.as_numpy("pid").dtype == np.int64


def test_bytes_booleans_and_integers_come_back_binary(client: Any) -> None:
    words = np.array(["", "ab", "héllo wörld", "x" * 70_000], dtype=object)
    result = client.infer("words", [tensor("word", words, "BYTES")])
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert [w.decode() for w in result.as_numpy("upper")] == [w.upper() for w in words]
    np.testing.assert_array_equal(result.as_numpy("length"), [0, 2, 11, 70_000])
    np.testing.assert_array_equal(result.as_numpy("long"), [False, False, True, True])


def test_an_output_holding_null_stays_json(client: Any) -> None:
    words = np.array(["null", "ok"], dtype=object)
    result = client.infer("words", [tensor("word", words, "BYTES")])
    upper = result.get_output("upper")
    assert "parameters" not in upper and upper["data"] == [None, "OK"]
    assert "binary_data_size" in result.get_output("length")["parameters"]


def test_each_output_may_choose_json_or_binary(client: Any) -> None:
    words = np.array(["abcd"], dtype=object)
    result = client.infer("words", [tensor("word", words, "BYTES")], outputs=[
        triton.InferRequestedOutput("upper", binary_data=False),
        triton.InferRequestedOutput("long", binary_data=True)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["upper", "long"]
    assert result.get_output("upper")["data"] == ["ABCD"]
    assert result.as_numpy("long").tolist() == [True]


# -- One meaning, whichever framing -------------------------------------------------------

@pytest.mark.parametrize("inputs_binary", [True, False])
def test_binary_and_json_give_the_same_answer(client: Any, inputs_binary: bool) -> None:
    x = np.array([[0.1, 0.2, 0.3], [7.0, 8.0, 9.5], [-1e-300, 0.0, 2.0]])
    as_json = client.infer("rowsum", [tensor("x", x, "FP64", binary=False)],
                           outputs=[triton.InferRequestedOutput("sum", binary_data=False)])
    assert "parameters" not in as_json.get_output("sum")
    as_binary = client.infer("rowsum", [tensor("x", x, "FP64", binary=inputs_binary)])
    np.testing.assert_array_equal(as_binary.as_numpy("sum"), as_json.as_numpy("sum"))
    action = np.array([b"ok", b"ok"], dtype=object)
    for outputs_binary in (True, False):
        pair = [tensor("action", action, "BYTES", inputs_binary),
                tensor("x", np.array([0.1, 99.9]), "FP64", inputs_binary)]
        result = client.infer("chaos", pair, outputs=[
            triton.InferRequestedOutput("y", binary_data=outputs_binary)])
        np.testing.assert_array_equal(result.as_numpy("y"), [0.2, 199.8])


@pytest.mark.parametrize("inputs_binary", [True, False])
def test_binary_and_json_give_the_same_verdict(client: Any, inputs_binary: bool) -> None:
    pair = [tensor("action", np.array([b"ok", b"dance"], dtype=object), "BYTES", inputs_binary),
            tensor("x", np.array([1.0, 2.0]), "FP64", inputs_binary)]
    with pytest.raises(InferenceServerException, match="'dance'") as caught:
        client.infer("chaos", pair)
    assert caught.value.status() == "422"
    pair = [tensor("action", np.array([b"ok"], dtype=object), "BYTES", inputs_binary),
            tensor("x", np.array([101.0]), "FP64", inputs_binary)]
    with pytest.raises(InferenceServerException, match="101") as caught:
        client.infer("chaos", pair)
    assert caught.value.status() == "422"


# -- Malformed binary bodies: a precise 400 naming the input ------------------------------

X_HEADER = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                        "parameters": {"binary_data_size": 24}}]}


def test_a_well_formed_hand_made_binary_request(server: Server) -> None:
    resp = framed(server, "rowsum", X_HEADER, fp64(1, 2, 3))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"  # no binary output asked for
    assert resp.json()["outputs"][0]["data"] == [6.0]


@pytest.mark.parametrize(("header", "body", "length", "field", "words"), [
    (X_HEADER, fp64(1, 2, 3), 10_000, "Inference-Header-Content-Length", "holds only"),
    (X_HEADER, fp64(1, 2, 3), "12a", "Inference-Header-Content-Length", "byte count"),
    (X_HEADER, fp64(1, 2, 3) + b"\0", None, "Inference-Header-Content-Length", "add up to 24"),
    (X_HEADER, fp64(1, 2), None, "inputs.x.parameters.binary_data_size", "runs past"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                  "parameters": {"binary_data_size": 16}}]}, fp64(1, 2), None,
     "inputs.x.parameters.binary_data_size", "needs 24"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                  "parameters": {"binary_data_size": 24}}]}, fp64(1, 2, 3), None,
     "inputs.x.parameters.binary_data_size", "4 bytes each"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                  "parameters": {"binary_data_size": "24"}}]}, fp64(1, 2, 3), None,
     "inputs.x.parameters.binary_data_size", "byte count"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3],
                  "parameters": {"binary_data_size": 24}}]}, fp64(1, 2, 3), None,
     "inputs.x.data", "both"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64"}]}, b"", None,
     "inputs.x.data", "no 'data'"),
])
def test_malformed_binary_tensor_bodies(server: Server, header: dict[str, Any], body: bytes,
                                        length: int | str | None, field: str,
                                        words: str) -> None:
    answer = error(framed(server, "rowsum", header, body, length=length), 400)
    assert answer["code"] == "BAD_REQUEST" and answer["details"]["field"] == field, answer
    assert words in answer["error"]
    if field.startswith("inputs."):
        assert "'x'" in answer["error"]


def test_binary_data_without_the_header_is_refused(server: Server) -> None:
    head = json.dumps(X_HEADER).encode()
    answer = error(server.client.post("/v2/models/rowsum/infer", content=head), 400)
    assert answer["details"]["field"] == "Inference-Header-Content-Length"
    assert "'x'" in answer["error"]
    answer = error(server.client.post("/v2/models/rowsum/infer", content=head + fp64(1, 2, 3)),
                   400)
    assert answer["code"] == "INVALID_JSON"
    assert "needs the Inference-Header-Content-Length header" in answer["error"]


@pytest.mark.parametrize(("data", "words"), [
    (strings(b"ok")[:3], "element 0 is cut short"),
    (strings(b"ok")[:5], "element 0 declares 2 bytes but only 1 remain"),
    (struct.pack("<I", 9) + b"ok", "element 0 declares 9 bytes but only 2 remain"),
    (struct.pack("<I", 2**32 - 1) + b"ok", "element 0 declares 4294967295 bytes"),
    (strings(b"ok", b"ok"), "holds more than 1 BYTES elements, the number its shape needs"),
    # a million empty elements for a shape of one: refused at the second, none decoded
    (strings(*[b""] * 1_000_000), "holds more than 1 BYTES elements"),
])
def test_malformed_bytes_elements(server: Server, data: bytes, words: str) -> None:
    header = {"inputs": [
        {"name": "action", "shape": [1], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(data)}},
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    answer = error(framed(server, "chaos", header, data), 400)
    assert answer["details"]["field"] == "inputs.action" and words in answer["error"]


@pytest.mark.parametrize(("datatype", "data", "got"), [
    ("BYTES", strings(b"\xff\xfe"), "element 0 is not UTF-8"),
])
def test_undecodable_binary_values_are_contract_violations(server: Server, datatype: str,
                                                          data: bytes, got: str) -> None:
    header = {"inputs": [{"name": "word", "shape": [1], "datatype": datatype,
                          "parameters": {"binary_data_size": len(data)}}]}
    v = error(framed(server, "words", header, data), 422)["details"]["violations"][0]
    assert (v["field"], v["got"]) == ("word", got)


def test_binary_nan_is_refused_like_json(server: Server) -> None:
    header = {"inputs": [{"name": "action", "shape": [1], "datatype": "BYTES", "data": ["ok"]},
                         {"name": "x", "shape": [1], "datatype": "FP64",
                          "parameters": {"binary_data_size": 8}}]}
    v = error(framed(server, "chaos", header, fp64(float("nan"))), 422)
    assert v["details"]["violations"][0]["field"] == "x"


# -- Datatypes checked against the contract -----------------------------------------------

@pytest.mark.parametrize("datatype", ["FP128", "INT8", "UINT64", "BOOL", "BYTES"])
def test_a_datatype_of_another_family_is_a_422_naming_both(server: Server,
                                                           datatype: str) -> None:
    resp = server.client.post("/v2/models/rowsum/infer", json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": datatype, "data": [1, 2, 3]}]})
    v = error(resp, 422)["details"]["violations"][0]
    assert (v["field"], v["expected"], v["got"]) == ("x", "FP64", datatype)
    assert datatype in v["message"] and "FP64" in v["message"] and "'x'" in v["message"]
    resp = server.client.post("/v2/models/chaos/infer", json={"inputs": [
        {"name": "action", "shape": [1], "datatype": "BYTES", "data": ["ok"]},
        {"name": "x", "shape": [1], "datatype": datatype, "data": [1]}]})
    assert error(resp, 422)["details"]["violations"][0]["got"] == datatype


@pytest.mark.parametrize(("datatype", "data"), [
    ("FP32", struct.pack("<3f", 1, 2, 3)), ("FP16", np.array([1, 2, 3], "<f2").tobytes()),
    ("FP64", fp64(1, 2, 3))])
def test_floats_of_any_width_convert_to_the_declared_float(server: Server, datatype: str,
                                                           data: bytes) -> None:
    header = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": datatype,
                          "parameters": {"binary_data_size": len(data)}}]}
    resp = framed(server, "rowsum", header, data)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [6.0]


def test_output_parameters_are_checked(server: Server) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
    for outputs, field in [
        ([{"name": "sum", "parameters": {"classification": 2}}],
         "outputs.sum.parameters.classification"),
        ([{"name": "sum", "parameters": {"binary_data": "yes"}}],
         "outputs.sum.parameters.binary_data")]:
        answer = error(server.client.post("/v2/models/rowsum/infer",
                                          json={**body, "outputs": outputs}), 400)
        assert answer["details"]["field"] == field
    answer = error(server.client.post("/v2/models/rowsum/infer", json={
        **body, "parameters": {"binary_data_output": 1}}), 400)
    assert answer["details"]["field"] == "parameters.binary_data_output"


def test_an_unknown_output_is_refused_before_the_model_runs(server: Server) -> None:
    resp = server.client.post("/v2/models/chaos/infer", json={
        "inputs": [{"name": "action", "shape": [1], "datatype": "BYTES", "data": ["raise"]},
                   {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}],
        "outputs": [{"name": "risk"}]})
    answer = error(resp, 400)  # not the model's 500: it was never called
    assert answer["details"]["field"] == "outputs" and "'risk'" in answer["error"]


# -- Compressed request bodies (tritonclient's request_compression_algorithm) -------------

@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(client: Any, algorithm: str) -> None:
    x = np.array([[1.0, 2.0, 3.0]] * 500)
    result = client.infer("rowsum", [tensor("x", x, "FP64")],
                          request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("sum"), np.full((500, 1), 6.0))


def test_compressed_bodies_are_checked(serve: Callable[..., Server],
                                       tensor_bundle: Path) -> None:
    server = serve([tensor_bundle], "--max-body-bytes", "2000")
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                                   "data": [1, 2, 3]}]}).encode()

    def post(content: bytes, encoding: str) -> Any:
        return server.client.post("/v2/models/rowsum/infer", content=content,
                                  headers={"content-encoding": encoding})

    assert post(gzip.compress(body), "gzip").json()["outputs"][0]["data"] == [6.0]
    bomb = gzip.compress(b" " * 1_000_000 + body)  # 1 MB of JSON whitespace in 1 kB
    assert len(bomb) < 2000
    answer = error(post(bomb, "gzip"), 413)
    assert answer["code"] == "PAYLOAD_TOO_LARGE" and "inflates" in answer["error"]
    for content, words in [(gzip.compress(body)[:-9], "cut short"),
                           (gzip.compress(body) + b"junk", "bytes after its end"),
                           (body, "not valid gzip")]:
        answer = error(post(content, "gzip"), 400)
        assert answer["details"]["field"] == "Content-Encoding" and words in answer["error"]
    answer = error(post(body, "br"), 415)
    assert answer["code"] == "UNSUPPORTED_ENCODING" and "'br'" in answer["error"]
    assert post(body, "identity").status_code == 200


# -- 405 says what is allowed -------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v2/models/rowsum/infer", "POST"), ("DELETE", "/v2/models/rowsum", "GET"),
    ("POST", "/v2/health/ready", "GET"), ("PUT", "/v1/models/chaos/predict", "POST"),
    ("GET", "/v1/models/chaos/feedback", "POST"), ("POST", "/openapi.json", "GET"),
    ("POST", "/ui", "GET"), ("DELETE", "/ui/static/main.js", "GET")])
def test_a_405_carries_allow(server: Server, method: str, path: str, allow: str) -> None:
    resp = server.client.request(method, path)
    assert resp.status_code == 405 and resp.json()["code"] == "METHOD_NOT_ALLOWED"
    assert resp.headers["allow"] == allow


def test_the_metrics_port_405_carries_allow(serve: Callable[..., Server],
                                            tensor_bundle: Path) -> None:
    port = free_port()
    serve([tensor_bundle], "--metrics-port", str(port))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as metrics:
        resp = metrics.post("/metrics")
        assert resp.status_code == 405 and resp.headers["allow"] == "GET"
        assert metrics.get("/metrics").status_code == 200


# -- Authentication covers the binary framing too -----------------------------------------

def test_binary_requests_need_a_token_like_json_ones(serve: Callable[..., Server],
                                                     tensor_bundle: Path,
                                                     tmp_path: Path) -> None:
    tokens = write_token_file(tmp_path / "tokens.json", {
        "client": (("infer",), None, False), "reader": (("read",), None, False)})
    server = serve([tensor_bundle], "--tokens", str(tmp_path / "tokens.json"))
    for headers, status in [({}, 401), (bearer(tokens["reader"]), 403),
                            (bearer(tokens["client"]), 200)]:
        head = json.dumps(X_HEADER).encode()
        resp = server.client.post("/v2/models/rowsum/infer", content=head + fp64(1, 2, 3),
                                  headers={**headers,
                                           "Inference-Header-Content-Length": str(len(head))})
        assert resp.status_code == status, resp.text
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        result = c.infer("rowsum", [tensor("x", np.ones((1, 3)), "FP64")],
                         headers=bearer(tokens["client"]))
        assert result.as_numpy("sum").tolist() == [[3.0]]
    finally:
        c.close()
