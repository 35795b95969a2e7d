"""The Open Inference Protocol over gRPC (`baton serve --grpc-port`), on a real engine, with
Triton's own client unchanged: health and metadata; the penguins example (strings, floats,
integers) and a tensors bundle at 1 and 100 rows, answered exactly as HTTP V2 answers the
same rows; raw and typed contents; errors as gRPC statuses carrying HTTP's codes and bodies;
the engine's tokens and TLS; the request metrics.

One engine (with tokens) serves most of the module; TLS and the start-up refusals start
their own, small ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import trustme
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import BATON, EXAMPLE, Server, free_port, records_contract, write_bundle
from tests.security.engines import bearer, write_token_file

#: The penguins contract's inputs, in order, with their V2 datatypes.
PENGUIN_INPUTS = [("island", "BYTES"), ("sex", "BYTES"), ("bill_length_mm", "FP64"),
                  ("bill_depth_mm", "FP64"), ("flipper_length_mm", "FP64"),
                  ("body_mass_g", "FP64"), ("year", "INT64")]
PENGUIN_OUTPUTS = ["prediction", "proba_Adelie", "proba_Chinstrap", "proba_Gentoo"]


WORDS_CODE = '''
class Model:
    def predict(self, inputs):
        words = list(inputs["word"])
        return {"upper": [None if w == "null" else w.upper() for w in words],
                "length": [len(w) for w in words], "long": [len(w) > 3 for w in words]}
'''
WORDS_CONTRACT = records_contract(
    inputs={"word": "string"},
    outputs={"upper": {"type": "string", "nullable": True}, "length": "integer",
             "long": "boolean"})


class GrpcServer(Server):
    """A `baton serve` with a gRPC port too."""

    def __init__(self, bundles: list[Path], env: dict[str, str], args: list[str]) -> None:
        self.grpc_port = free_port()
        super().__init__(bundles, env, ["--grpc-port", str(self.grpc_port), *args])
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("grpc-tokens")
    found = write_token_file(folder / "tokens.toml", {"app": (("infer",), None, False),
                                                      "ops": (("read",), None, False),
                                                      "root": (("admin",), None, False)})
    return {**found, "file": str(folder / "tokens.toml")}


@pytest.fixture(scope="module")
def words_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Strings in; strings (the word "null" answers null), integers and booleans out."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "words", name="words",
                        code=WORDS_CODE, contract=WORDS_CONTRACT)


@pytest.fixture(scope="module")
def server(tensor_bundle: Path, words_bundle: Path, tokens: dict[str, str],
           baton_env: dict[str, str]) -> Iterator[GrpcServer]:
    s = GrpcServer([EXAMPLE, tensor_bundle, words_bundle], baton_env,
                   ["--tokens", tokens["file"]])
    s.client.headers.update(bearer(tokens["root"]))
    s.wait_ready()
    assert f"gRPC (Open Inference Protocol): {s.grpc_url}" in s.output()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def auth(tokens: dict[str, str]) -> dict[str, str]:
    """The metadata of a caller with the `infer` scope."""
    return bearer(tokens["app"])


@pytest.fixture(scope="module")
def client(server: GrpcServer) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: GrpcServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """Triton's generated stub, for what its client does not send (typed contents)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def penguins(n: int) -> list[dict[str, Any]]:
    """``n`` rows of the example's samples, cycling through those without a null (neither
    raw nor typed gRPC contents can carry one)."""
    samples = json.loads((EXAMPLE / "samples" / "input.json").read_text())
    full = [r for r in samples if all(v is not None for v in r.values())]
    return [full[i % len(full)] for i in range(n)]


def columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    kinds = {"BYTES": object, "FP64": np.float64, "INT64": np.int64}
    return {name: np.array([r[name] for r in rows], dtype=kinds[dt])
            for name, dt in PENGUIN_INPUTS}


def triton_inputs(module: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """The rows as tritonclient sends them by default (raw / binary)."""
    out = []
    for (name, datatype), values in zip(PENGUIN_INPUTS, columns(rows).values(), strict=True):
        inp = module.InferInput(name, list(values.shape), datatype)
        inp.set_data_from_numpy(values)
        out.append(inp)
    return out


def refused(call: Any, status: grpc.StatusCode) -> str:
    """The message of the refusal ``call()`` gets, whose status must be ``status``."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == str(status), caught.value
    return str(caught.value.message())


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def trailer(err: grpc.RpcError, key: str) -> Any:
    return next(v for k, v in err.trailing_metadata() or () if k == key)


# -- health and metadata ------------------------------------------------------------------

def test_health_and_metadata(client: Any, server: GrpcServer, auth: dict[str, str]) -> None:
    assert client.is_server_live() and client.is_server_ready()  # probes need no token
    assert client.is_model_ready("penguins", headers=auth)
    assert client.is_model_ready("rowsum", "1.0.0", headers=auth)
    meta = client.get_server_metadata(headers=auth, as_json=True)
    assert meta["name"] == "baton" and meta["extensions"] == ["binary_tensor_data"]
    for model in ("penguins", "rowsum"):
        got = client.get_model_metadata(model, headers=auth, as_json=True)
        http = server.model(model)
        assert (got["name"], got["versions"], got["platform"]) == (
            model, http["versions"], http["platform"])
        for side in ("inputs", "outputs"):
            assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in got[side]] == \
                http[side]
    message = refused(lambda: client.is_model_ready("penguins", "9.9", headers=auth),
                      grpc.StatusCode.NOT_FOUND)
    assert message.startswith("MODEL_NOT_FOUND: no model named penguins version 9.9")


def test_other_rpcs_are_unimplemented(client: Any, auth: dict[str, str]) -> None:
    refused(lambda: client.get_model_config("penguins", headers=auth),
            grpc.StatusCode.UNIMPLEMENTED)
    refused(lambda: client.get_inference_statistics(headers=auth),
            grpc.StatusCode.UNIMPLEMENTED)


# -- inference ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 100])
def test_penguins_answer_as_over_http(client: Any, server: GrpcServer, auth: dict[str, str],
                                      tokens: dict[str, str], n: int) -> None:
    rows = penguins(n)
    got = client.infer("penguins", triton_inputs(tgrpc, rows), request_id=f"req-{n}",
                       headers=auth)
    http = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    # A copy: tritonclient.http adds its framing header to the dict it is given.
    want = http.infer("penguins", triton_inputs(thttp, rows), headers=dict(auth))
    http.close()
    response = got.get_response(as_json=True)
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "penguins", "1.0.0", f"req-{n}")
    assert len(got.get_response().raw_output_contents) == 4  # raw in, raw out
    for name in PENGUIN_OUTPUTS:
        assert got.as_numpy(name).shape == (n,)
        np.testing.assert_array_equal(got.as_numpy(name), want.as_numpy(name))
    ids = response["parameters"]["prediction_ids"]["string_param"].split(",")
    assert len(ids) == n and len(set(ids)) == n
    # The same rows through the records API: the same species.
    records = server.client.post("/v1/models/penguins/predict", json=rows).json()
    assert [p["prediction"] for p in records["predictions"]] == \
        [s.decode() for s in got.as_numpy("prediction")]


def test_outputs_can_be_chosen(client: Any, auth: dict[str, str]) -> None:
    got = client.infer("penguins", triton_inputs(tgrpc, penguins(3)), headers=auth,
                       outputs=[tgrpc.InferRequestedOutput("proba_Gentoo")])
    assert [o.name for o in got.get_response().outputs] == ["proba_Gentoo"]
    assert got.as_numpy("proba_Gentoo").shape == (3,)


def typed_penguins(rows: list[dict[str, Any]]) -> service_pb2.ModelInferRequest:
    """The rows in typed contents (which tritonclient's client never sends)."""
    req = service_pb2.ModelInferRequest(model_name="penguins", id="typed")
    field = {"BYTES": "bytes_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}
    for name, datatype in PENGUIN_INPUTS:
        tensor = req.inputs.add(name=name, datatype=datatype, shape=[len(rows)])
        values = [r[name] for r in rows]
        getattr(tensor.contents, field[datatype]).extend(
            [v.encode() for v in values] if datatype == "BYTES" else values)
    return req


def test_typed_contents_are_answered_typed(client: Any, stub: Any,
                                           auth: dict[str, str]) -> None:
    rows = penguins(20)
    typed = stub.ModelInfer(typed_penguins(rows), metadata=tuple(auth.items()))
    assert not typed.raw_output_contents and typed.id == "typed"
    raw = client.infer("penguins", triton_inputs(tgrpc, rows), headers=auth)
    by_name = {o.name: o for o in typed.outputs}
    assert list(by_name) == PENGUIN_OUTPUTS
    assert list(by_name["prediction"].contents.bytes_contents) == \
        list(raw.as_numpy("prediction"))
    for name in PENGUIN_OUTPUTS[1:]:
        assert by_name[name].datatype == "FP64" and list(by_name[name].shape) == [20]
        np.testing.assert_array_equal(by_name[name].contents.fp64_contents,
                                      raw.as_numpy(name))


@pytest.mark.parametrize("n", [1, 100])
def test_a_tensors_bundle(client: Any, stub: Any, auth: dict[str, str], n: int) -> None:
    x = np.arange(n * 3, dtype=np.float64).reshape(n, 3) / 7
    inp = tgrpc.InferInput("x", [n, 3], "FP64")
    inp.set_data_from_numpy(x)
    got = client.infer("rowsum", [inp], headers=auth)
    np.testing.assert_array_equal(got.as_numpy("sum"), x.sum(axis=1, keepdims=True))
    req = service_pb2.ModelInferRequest(model_name="rowsum", model_version="1.0.0")
    req.inputs.add(name="x", datatype="FP32", shape=[n, 3]).contents.fp32_contents.extend(
        x.reshape(-1).tolist())
    typed = stub.ModelInfer(req, metadata=tuple(auth.items()))
    assert list(typed.outputs[0].shape) == [n, 1]
    np.testing.assert_allclose(typed.outputs[0].contents.fp64_contents,
                               x.astype(np.float32).sum(axis=1), rtol=1e-6)


# -- errors -------------------------------------------------------------------------------

def test_a_contract_violation_is_invalid_argument_naming_the_field(
        client: Any, server: GrpcServer, stub: Any, auth: dict[str, str]) -> None:
    rows = penguins(2)
    rows[1] = {**rows[1], "island": "Atlantis"}
    message = refused(lambda: client.infer("penguins", triton_inputs(tgrpc, rows),
                                           headers=auth), grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith("CONTRACT_VIOLATION: input contract violated at record 1, "
                              "field 'island'")
    # The trailer holds the body HTTP answers for the same rows, details included.
    err = rpc_error(stub.ModelInfer, typed_penguins(rows), metadata=tuple(auth.items()))
    http = server.client.post("/v2/models/penguins/infer", json={"inputs": [
        {"name": n, "datatype": dt, "shape": [2], "data": [r[n] for r in rows]}
        for n, dt in PENGUIN_INPUTS]})
    assert http.status_code == 422
    assert json.loads(trailer(err, "baton-error-bin")) == http.json()
    # A datatype of another family, a missing input, counts that disagree.
    wrong = typed_penguins(rows[:1])
    wrong.inputs[2].datatype = "INT64"
    wrong.inputs[2].contents.Clear()
    wrong.inputs[2].contents.int64_contents.append(40)
    err = rpc_error(stub.ModelInfer, wrong, metadata=tuple(auth.items()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'bill_length_mm' has datatype INT64, expected FP64" in err.details()
    missing = typed_penguins(rows[:1])
    del missing.inputs[-1]
    err = rpc_error(stub.ModelInfer, missing, metadata=tuple(auth.items()))
    assert "missing input 'year'" in err.details()
    short = typed_penguins(rows[:1])
    short.inputs[0].shape[0] = 2
    err = rpc_error(stub.ModelInfer, short, metadata=tuple(auth.items()))
    assert err.details() == ("BAD_REQUEST: input 'island': shape [2] needs 2 values, "
                             "contents.bytes_contents holds 1")


def test_strings_integers_and_booleans_raw_and_typed(client: Any, stub: Any,
                                                     auth: dict[str, str]) -> None:
    words = ["", "ab", "héllo wörld", "x" * 70_000]
    inp = tgrpc.InferInput("word", [4], "BYTES")
    inp.set_data_from_numpy(np.array(words, dtype=object))
    raw = client.infer("words", [inp], headers=auth)
    assert [w.decode() for w in raw.as_numpy("upper")] == [w.upper() for w in words]
    np.testing.assert_array_equal(raw.as_numpy("length"), [0, 2, 11, 70_000])
    np.testing.assert_array_equal(raw.as_numpy("long"), [False, False, True, True])
    req = service_pb2.ModelInferRequest(model_name="words")
    req.inputs.add(name="word", datatype="BYTES", shape=[4, 1]).contents.bytes_contents.extend(
        w.encode() for w in words)
    typed = {o.name: o for o in stub.ModelInfer(req, metadata=tuple(auth.items())).outputs}
    assert [w.decode() for w in typed["upper"].contents.bytes_contents] == \
        [w.upper() for w in words]
    assert list(typed["length"].contents.int64_contents) == [0, 2, 11, 70_000]
    assert list(typed["long"].contents.bool_contents) == [False, False, True, True]


def test_a_null_a_tensor_cannot_carry_is_refused(client: Any, stub: Any,
                                                 auth: dict[str, str]) -> None:
    inp = tgrpc.InferInput("word", [2], "BYTES")
    inp.set_data_from_numpy(np.array(["null", "ok"], dtype=object))
    message = refused(lambda: client.infer("words", [inp], headers=auth),
                      grpc.StatusCode.UNIMPLEMENTED)
    assert message.startswith("NULL_OUTPUT: output 'upper' holds a null, which a BYTES "
                              "tensor cannot carry over gRPC")
    # Without the output that holds it, the same rows are answered.
    got = client.infer("words", [inp], headers=auth,
                       outputs=[tgrpc.InferRequestedOutput("length")])
    np.testing.assert_array_equal(got.as_numpy("length"), [4, 2])


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.raw_input_contents.append(b"\0\0\0\0"),
     "BAD_REQUEST: raw_input_contents holds 1 entries for 7 inputs"),
    (lambda r: r.inputs[6].contents.int_contents.append(1),
     "BAD_REQUEST: input 'year' is INT64: its values belong in contents.int64_contents, not "
     "contents.int_contents"),
    (lambda r: setattr(r.inputs[2], "datatype", "FP16"),
     "BAD_REQUEST: input 'bill_length_mm' is FP16, which has no contents field"),
    (lambda r: r.inputs[2].shape.__setitem__(0, -1),
     "BAD_REQUEST: input 'bill_length_mm': shape [-1] has a negative size"),
    (lambda r: [r.inputs[0].parameters["binary_data_size"].MergeFrom(
        service_pb2.InferParameter(int64_param=8)), r.parameters["priority"].MergeFrom(
        service_pb2.InferParameter(uint64_param=1))], None),
])
def test_malformed_requests_are_invalid_argument(stub: Any, auth: dict[str, str],
                                                 change: Any, message: str | None) -> None:
    req = typed_penguins(penguins(1))
    change(req)
    if message is None:  # input parameters are accepted and have no effect, as over HTTP
        assert stub.ModelInfer(req, metadata=tuple(auth.items())).outputs
        return
    err = rpc_error(stub.ModelInfer, req, metadata=tuple(auth.items()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(message), err.details()


def test_typed_integers_are_range_checked(stub: Any, auth: dict[str, str]) -> None:
    req = typed_penguins(penguins(1))
    year = req.inputs[6]
    year.datatype = "INT8"
    year.contents.Clear()
    year.contents.int_contents.append(2007)
    err = rpc_error(stub.ModelInfer, req, metadata=tuple(auth.items()))
    assert err.details() == ("BAD_REQUEST: input 'year': contents.int_contents holds values "
                             "outside INT8's range [-128, 127]")


def test_an_unknown_model_is_not_found(client: Any, auth: dict[str, str]) -> None:
    message = refused(lambda: client.infer("nope", triton_inputs(tgrpc, penguins(1)),
                                           headers=auth), grpc.StatusCode.NOT_FOUND)
    assert message.startswith("MODEL_NOT_FOUND: no model named nope; serving: ")
    refused(lambda: client.get_model_metadata("nope", headers=auth),
            grpc.StatusCode.NOT_FOUND)


# -- tokens -------------------------------------------------------------------------------

def test_tokens_are_required_as_over_http(client: Any, tokens: dict[str, str]) -> None:
    inputs = triton_inputs(tgrpc, penguins(1))
    for call in (lambda h: client.infer("penguins", inputs, headers=h),
                 lambda h: client.infer("nope", inputs, headers=h),  # before the lookup
                 lambda h: client.get_model_metadata("penguins", headers=h),
                 lambda h: client.is_model_ready("penguins", headers=h),
                 lambda h: client.get_server_metadata(headers=h)):
        assert refused(partial(call, None), grpc.StatusCode.UNAUTHENTICATED).startswith(
            "UNAUTHORIZED: this engine needs a token")
        assert refused(partial(call, bearer("bte_not-a-token")),
                       grpc.StatusCode.UNAUTHENTICATED) == "INVALID_TOKEN: invalid token"
        assert refused(partial(call, {"authorization": "Basic YWRtaW4="}),
                       grpc.StatusCode.UNAUTHENTICATED).startswith("UNAUTHORIZED")
        message = refused(partial(call, bearer(tokens["ops"])),
                          grpc.StatusCode.PERMISSION_DENIED)
        assert message.startswith("FORBIDDEN: this token (ops) lacks the 'infer' scope")
    assert client.infer("penguins", inputs, headers=bearer(tokens["root"])).as_numpy(
        "prediction").shape == (1,)


# -- metrics ------------------------------------------------------------------------------

def grpc_requests(server: GrpcServer) -> dict[str, float]:
    """``baton_requests_total`` of the penguins' gRPC endpoint, by status."""
    text = server.client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "baton_requests_total" and labels["endpoint"] == "grpc" \
                    and labels["model"] == "penguins":
                out[labels["status"]] = sample.value
    return out


def test_metrics_count_grpc_requests(client: Any, server: GrpcServer,
                                     auth: dict[str, str]) -> None:
    before = grpc_requests(server)
    for _ in range(3):
        client.infer("penguins", triton_inputs(tgrpc, penguins(2)), headers=auth)
    with pytest.raises(InferenceServerException):
        client.infer("penguins", triton_inputs(tgrpc, [{**penguins(1)[0], "island": "Mu"}]),
                     headers=auth)
    after = grpc_requests(server)
    assert after.get("200", 0) - before.get("200", 0) == 3
    assert after.get("422", 0) - before.get("422", 0) == 1
    stats = server.client.get("/v1/stats").json()
    penguin = next(m for m in stats["models"] if m["name"] == "penguins")
    assert penguin["metrics"]["errors_by_code"].get("contract/CONTRACT_VIOLATION", 0) >= 1


# -- TLS and start-up ---------------------------------------------------------------------

def test_tls_is_the_http_servers(tensor_bundle: Path, baton_env: dict[str, str],
                                 tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    s = GrpcServer([tensor_bundle], baton_env, ["--tls-cert", str(tmp_path / "cert.pem"),
                                                "--tls-key", str(tmp_path / "key.pem")])
    try:
        s.client.close()
        s.client = httpx.Client(base_url=f"https://127.0.0.1:{s.port}", timeout=30,
                                verify=ssl.create_default_context(
                                    cafile=str(tmp_path / "ca.pem")))
        s.wait_ready()
        assert f"gRPC (Open Inference Protocol): {s.grpc_url} (TLS)" in s.output()
        secure = tgrpc.InferenceServerClient(
            s.grpc_url, ssl=True, root_certificates=str(tmp_path / "ca.pem"))
        x = np.ones((2, 3))
        inp = tgrpc.InferInput("x", [2, 3], "FP64")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(secure.infer("rowsum", [inp]).as_numpy("sum"),
                                      [[3.0], [3.0]])
        secure.close()
        plain = tgrpc.InferenceServerClient(s.grpc_url)
        refused(lambda: plain.is_server_live(client_timeout=10),
                grpc.StatusCode.UNAVAILABLE)
        plain.close()
    finally:
        assert s.stop() == 0


def test_without_grpcio_serve_says_which_extra(tmp_path: Path,
                                                baton_env: dict[str, str]) -> None:
    fake = tmp_path / "nogrpc" / "grpc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no grpc here', name='grpc')\n")
    env = {**baton_env, "PYTHONPATH": os.pathsep.join(
        [str(fake.parent), *filter(None, [baton_env.get("PYTHONPATH")])])}
    result = subprocess.run([*BATON, "serve", str(EXAMPLE), "--port", str(free_port()),
                             "--grpc-port", str(free_port())], env=env, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert ("error [GRPC_MISSING]: --grpc-port needs grpcio and protobuf (grpc is not "
            "installed): pip install 'baton[grpc]'") in result.stderr


def test_a_taken_grpc_port_stops_serve_at_once(baton_env: dict[str, str]) -> None:
    def serve(port: int, grpc_port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BATON, "serve", str(EXAMPLE), "--port", str(port),
                               "--grpc-port", str(grpc_port)], env=baton_env, text=True,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    port = free_port()
    same = serve(port, port)
    assert same.returncode == 2
    assert (f"error [INVALID_SETTING]: --grpc-port {port} is also the HTTP or the metrics "
            "port: give gRPC a port of its own") in same.stderr
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        result = serve(free_port(), taken)
    assert result.returncode == 1
    assert f"error [SERVER_START_FAILED]: cannot listen on 127.0.0.1:{taken}" in result.stderr


def test_a_stop_drains_grpc_calls_in_flight(chaos_bundle: Path, baton_env: dict[str, str]
                                            ) -> None:
    s = GrpcServer([chaos_bundle], baton_env, [])
    s.wait_ready()
    [worker] = [w["pid"] for w in s.model("chaos")["parameters"]["workers"]]
    client = tgrpc.InferenceServerClient(s.grpc_url)
    action, x = tgrpc.InferInput("action", [1], "BYTES"), tgrpc.InferInput("x", [1], "FP64")
    action.set_data_from_numpy(np.array(["ok"], dtype=object))
    x.set_data_from_numpy(np.array([4.0]))
    answers: list[Any] = []
    os.kill(worker, signal.SIGSTOP)  # the call waits in the worker until SIGCONT
    try:
        caller = threading.Thread(target=lambda: answers.append(
            client.infer("chaos", [action, x]).as_numpy("y")))
        caller.start()
        deadline = time.monotonic() + 30
        while not s.model("chaos")["parameters"]["workers"][0]["in_flight"]:
            assert time.monotonic() < deadline, "the call never reached the worker"
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        late = tgrpc.InferenceServerClient(s.grpc_url)
        refused(lambda: late.is_server_live(client_timeout=5), grpc.StatusCode.UNAVAILABLE)
        late.close()
    finally:
        os.kill(worker, signal.SIGCONT)
    caller.join(60)
    np.testing.assert_array_equal(answers[0], [8.0])
    assert s.proc.wait(30) == 0
    client.close()
    s.client.close()
    s.log.close()
