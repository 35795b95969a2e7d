"""ModelInfer as an attacker or a sloppy client uses it, on a real engine: every malformed
request gets INVALID_ARGUMENT (or NOT_FOUND, UNAVAILABLE, RESOURCE_EXHAUSTED) naming the
input or field and the reason, as HTTP V2 refuses the same mistake; none costs a worker, and
the engine answers the next request as before.

One engine serves the module: the row-sum tensors bundle, the words records bundle, and a
chaos bundle that fails to load (a model that is never ready), with a 1 MB message limit.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.server.test_grpc import GrpcServer, words_bundle  # noqa: F401 (a fixture)

LIMIT = 1_000_000
Request = service_pb2.ModelInferRequest


@pytest.fixture(scope="module")
def server(tensor_bundle: Path, words_bundle: Path, chaos_bundle: Path,  # noqa: F811
           baton_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GrpcServer]:
    broken = shutil.copytree(chaos_bundle, tmp_path_factory.mktemp("broken") / "chaos")
    (broken / "FAIL_LOAD").write_text("")
    s = GrpcServer([tensor_bundle, words_bundle, broken], baton_env,
                   ["--max-body-bytes", str(LIMIT)])
    deadline = time.monotonic() + 120
    while not (ready(s, "rowsum") and ready(s, "words")
               and s.model("chaos")["parameters"]["load_error"] is not None):
        assert s.proc.poll() is None and time.monotonic() < deadline, s.output()
        time.sleep(0.05)
    yield s
    s.stop()


def ready(s: GrpcServer, model: str) -> bool:
    try:
        return s.client.get(f"/v2/models/{model}/ready").status_code == 200
    except Exception:  # not listening yet
        return False


@pytest.fixture(scope="module")
def stub(server: GrpcServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    # The client may send more than the server takes: the server's limit is under test.
    with grpc.insecure_channel(server.grpc_url, options=[
            ("grpc.max_send_message_length", -1)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def rows(n: int = 2) -> Request:
    """``n`` rows of the row-sum model, typed."""
    req = Request(model_name="rowsum")
    req.inputs.add(name="x", datatype="FP64", shape=[n, 3]).contents.fp64_contents.extend(
        [1.0] * n * 3)
    return req


def raw_rows(n: int = 2) -> Request:
    req = Request(model_name="rowsum")
    req.inputs.add(name="x", datatype="FP64", shape=[n, 3])
    req.raw_input_contents.append(np.ones((n, 3), "<f8").tobytes())
    return req


def words(raw: bytes, shape: list[int]) -> Request:
    req = Request(model_name="words")
    req.inputs.add(name="word", datatype="BYTES", shape=shape)
    req.raw_input_contents.append(raw)
    return req


def chaos(action: str) -> Request:
    req = Request(model_name="chaos")
    req.inputs.add(name="action", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        action.encode())
    req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    return req


def edit(base: Callable[[], Request], change: Callable[[Request], Any]) -> Callable[[], Request]:
    def build() -> Request:
        req = base()
        change(req)
        return req
    return build


def clear_contents(req: Request, dims: list[int]) -> None:
    del req.inputs[0].shape[:]
    req.inputs[0].shape.extend(dims)
    req.inputs[0].contents.Clear()


def param(**kind: Any) -> service_pb2.InferParameter:
    return service_pb2.InferParameter(**kind)


HUGE = 2**40
CASES: list[tuple[str, Callable[[], Request], grpc.StatusCode, str]] = [
    ("raw bytes fewer than the shape needs",
     edit(raw_rows, lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 8)),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'x': 8 bytes of binary data, but shape [2, 3] of FP64 (8 bytes each)"
     " needs 48"),
    ("more raw entries than inputs",
     edit(raw_rows, lambda r: r.raw_input_contents.append(b"")),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: raw_input_contents holds 2 entries for 1 inputs"),
    ("fewer raw entries than inputs",
     edit(raw_rows, lambda r: r.inputs.add(name="y", datatype="FP64", shape=[2, 3])),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: raw_input_contents holds 1 entries for 2 inputs"),
    ("raw contents mixed with typed",
     edit(raw_rows, lambda r: r.inputs[0].contents.fp64_contents.extend([1.0] * 6)),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'x' has contents, but the request sends raw_input_contents"),
    ("a negative size", edit(rows, lambda r: r.inputs[0].shape.__setitem__(1, -3)),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'x': shape [2, -3] has a negative size"),
    ("a zero size", edit(rows, lambda r: clear_contents(r, [0, 3])),
     grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_REQUEST: the request holds no rows"),
    ("sizes past any message", edit(rows, lambda r: r.inputs[0].shape.__setitem__(0, HUGE)),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"BAD_REQUEST: input 'x': shape [{HUGE}, 3] "),
    ("a zero size beside huge ones", edit(rows, lambda r: clear_contents(r, [0, 2**62])),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"BAD_REQUEST: input 'x': shape [0, {2**62}] is too large"),
    ("a huge size beside a zero", edit(raw_rows, lambda r: [
        r.inputs[0].shape.__setitem__(0, 2**62), r.inputs[0].shape.__setitem__(1, 0),
        r.raw_input_contents.__setitem__(0, b"")]),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"BAD_REQUEST: input 'x': shape [{2**62}, 0] is too large"),
    ("too many dimensions", edit(rows, lambda r: [
        clear_contents(r, [1] * 65), r.inputs[0].contents.fp64_contents.append(1.0)]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'x': shape has 65 dimensions, more than 32"),
    ("more values than the shape", edit(rows, lambda r: r.inputs[0].contents.fp64_contents
                                        .append(1.0)),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'x': shape [2, 3] needs 6 values, contents.fp64_contents holds 7"),
    ("a BYTES length past the data", lambda: words(struct.pack("<I", 5) + b"abc", [1]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'word': BYTES element 0 declares 5 bytes but only 3 remain"),
    ("a BYTES length of 2**32-1", lambda: words(struct.pack("<I", 2**32 - 1) + b"abc", [1]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'word': BYTES element 0 declares 4294967295 bytes but only 3 remain"),
    ("a cut BYTES length", lambda: words(struct.pack("<I", 1) + b"a\1\0", [2]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'word': BYTES element 1 is cut short"),
    ("fewer BYTES elements than the shape",
     lambda: words(struct.pack("<I", 1) + b"a", [2]), grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'word' holds 1 BYTES elements but its shape needs 2"),
    ("FP16 typed", edit(rows, lambda r: setattr(r.inputs[0], "datatype", "FP16")),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: input 'x' is FP16, which has no contents field"),
    ("BF16", edit(raw_rows, lambda r: setattr(r.inputs[0], "datatype", "BF16")),
     grpc.StatusCode.INVALID_ARGUMENT, "CONTRACT_VIOLATION: input contract violated: input "
     "'x' has datatype BF16, which is not an Open Inference Protocol datatype; expected FP64"),
    ("BOOL given as FP32 contents", edit(rows, lambda r: [
        setattr(r.inputs[0], "datatype", "BOOL"), r.inputs[0].contents.Clear(),
        r.inputs[0].contents.fp32_contents.extend([1.0] * 6)]),
     grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST: input 'x' is BOOL: its values belong in "
     "contents.bool_contents, not contents.fp32_contents"),
    ("a duplicate input", edit(rows, lambda r: r.inputs.append(r.inputs[0])),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: inputs repeat a name: 'x' is given more than once"),
    ("an unknown model", edit(rows, lambda r: setattr(r, "model_name", "nope")),
     grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND: no model named nope"),
    ("an unknown version", edit(rows, lambda r: setattr(r, "model_version", "9")),
     grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND: no model named rowsum version 9"),
    ("an output that does not exist", edit(rows, lambda r: r.outputs.add(name="nope")),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: requested output 'nope' does not exist; outputs are ['sum']"),
    ("binary_data as a string", edit(rows, lambda r: r.outputs.add(name="sum").parameters[
        "binary_data"].MergeFrom(param(string_param="yes"))),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: output 'sum': binary_data must be true or false, got 'yes'"),
    ("binary_data_output as an integer", edit(rows, lambda r: r.parameters[
        "binary_data_output"].MergeFrom(param(int64_param=1))),
     grpc.StatusCode.INVALID_ARGUMENT,
     "BAD_REQUEST: parameters.binary_data_output must be true or false, got 1"),
    ("a model that is not ready", lambda: chaos("ok"),
     grpc.StatusCode.UNAVAILABLE,
     "MODEL_NOT_READY: chaos is not ready: chaos: load failed"),
]


@pytest.mark.parametrize(("build", "status", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_malformed_request_is_refused_by_name(stub: Any, build: Callable[[], Request],
                                                status: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(build(), timeout=30)
    assert (caught.value.code(), caught.value.details()[:len(message)]) == (status, message)


def test_a_message_over_the_limit_is_resource_exhausted(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(raw_rows(LIMIT // 24 + 1), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in caught.value.details()
    assert f"vs. {LIMIT})" in caught.value.details()
    assert list(stub.ModelInfer(raw_rows(LIMIT // 48), timeout=30).outputs[0].shape) == [
        LIMIT // 48, 1]


def test_metadata_of_an_unknown_model_is_not_found(stub: Any) -> None:
    for call, req in ((stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
                      (stub.ModelReady, service_pb2.ModelReadyRequest(name="rowsum",
                                                                      version="9"))):
        with pytest.raises(grpc.RpcError) as caught:
            call(req, timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details().startswith("MODEL_NOT_FOUND: no model named ")
    assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="chaos"), timeout=30).ready


@pytest.mark.parametrize(("where", "long", "start"), [
    ("model_name", "n" * 200_000, "MODEL_NOT_FOUND: no model named nnn"),
    ("input", "é" * 100_000, "CONTRACT_VIOLATION: input contract violated: unknown input"),
    ("output", "%" * 200_000, "BAD_REQUEST: requested output '%%%")],
    ids=["model_name", "input", "output"])  # a test id goes in the environment: keep it short
def test_a_long_name_is_refused_in_a_short_message(stub: Any, where: str, long: str,
                                                   start: str) -> None:
    """An error echoes the names a client sent: clipped, it still reaches the client (the
    whole name made trailers past gRPC's 16 KiB, and the client got "Stream removed")."""
    req = rows()
    if where == "model_name":
        req.model_name = long
    elif where == "input":
        req.inputs[0].name = long
    else:
        req.outputs.add(name=long)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(req, timeout=30)
    err = caught.value
    assert err.details().startswith(start) and err.details().endswith("..."), err
    assert len(err.details().encode()) <= 2048
    body = json.loads(dict(err.trailing_metadata())["baton-error-bin"])
    assert body["error"].endswith("...") and len(body["error"].encode()) <= 768


def test_no_malformed_request_costs_a_worker(server: GrpcServer, stub: Any) -> None:
    before = {m: server.worker_pids(m) for m in ("rowsum", "words")}
    for _, build, _, _ in CASES:
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(build(), timeout=30)
    assert {m: server.worker_pids(m) for m in before} == before
    got = stub.ModelInfer(rows(2), timeout=30)
    assert list(got.outputs[0].contents.fp64_contents) == [3.0, 3.0]
    assert server.model("rowsum")["parameters"]["restarts"] == 0
