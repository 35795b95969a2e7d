"""The V2 tensor decoder's fast path (orjson and numpy for data holding only numbers) gives
the strict decoder's verdict on every input: the same array, or the same refusal."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from baton.contract.spec import TensorSpec
from baton.errors import ContractViolation
from baton.serving import v2

CASES = [
    ("FP64", [-1, 2], b"[[1.5, 2], [3e2, -4E-1]]"),
    ("FP64", [-1], b"[1, 2, 3]"),
    ("FP32", [-1], b"[1e39, 1.0]"),  # beyond float32: infinity, refused by the contract
    ("FP64", [-1], b"[1e400]"),
    ("FP64", [-1], b"[9223372036854775808, 18446744073709551616, 1e30]"),
    ("FP64", [-1], b"[1.0, true]"),
    ("FP64", [-1], b'[1.0, "2"]'),
    ("FP64", [-1], b"[1.0, null]"),
    ("FP64", [-1], b"[1.0, {}]"),
    ("FP64", [-1, 2], b"[[1.0, 2.0], [3.0]]"),
    ("FP64", [-1, 2], b"[[1.0, 2.0], 3.0]"),
    ("FP64", [-1], b"[1.0, [2.0]]"),
    ("FP64", [-1], b"[1., 2]"),
    ("FP64", [-1], b"[]"),
    ("INT64", [-1], b"[1, -2, 3]"),
    ("INT64", [-1], b"[1, 2.0]"),
    ("INT64", [-1], b"[1, 2e1]"),
    ("INT64", [-1], b"[9223372036854775807, -9223372036854775808]"),
    ("INT64", [-1], b"[9223372036854775808]"),
    ("INT64", [-1], b"[18446744073709551616]"),
    ("INT8", [-1], b"[127, -128]"),
    ("INT8", [-1], b"[128]"),
    ("INT8", [-1], b"[-129]"),
    ("UINT8", [-1], b"[255, 0]"),
    ("UINT8", [-1], b"[-1]"),
    ("UINT64", [-1], b"[18446744073709551615]"),
    ("UINT64", [-1], b"[-1]"),
    ("INT32", [-1, 2], b"[[1, 2], [3, 4]]"),
    ("INT32", [-1, 2], b"[[1, 2], [3, false]]"),
    ("BOOL", [-1], b"[true, false]"),
]


def decoded(datatype: str, shape: list[int], data: bytes) -> Any:
    spec = TensorSpec(name="x", datatype=datatype, shape=tuple(-1 for _ in shape))
    try:
        rows = len(msgspec.json.decode(data))
    except msgspec.DecodeError:  # malformed: the shape's row count does not matter
        rows = 2
    inp = v2.RequestInput(name="x", shape=[rows, *shape[1:]], datatype=datatype,
                          data=msgspec.Raw(data))
    try:
        arr = v2._decode_tensor(spec, inp)
    except ContractViolation as exc:
        return ("refused", str(exc), exc.violations)
    return (arr.dtype.str, arr.shape, arr.tolist())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e39
@pytest.mark.parametrize(("datatype", "shape", "data"), CASES)
def test_the_fast_path_gives_the_strict_decoders_verdict(
        datatype: str, shape: list[int], data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = decoded(datatype, shape, data)
    monkeypatch.setattr(v2, "_numbers", lambda raw, want: None)
    assert fast == decoded(datatype, shape, data)


def test_numbers_alone_never_reach_the_strict_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    strict: list[bytes] = []
    real = v2._strict_tensor

    def spy(spec: TensorSpec, raw: bytes, element: type, depth: int) -> np.ndarray:
        strict.append(raw)
        return real(spec, raw, element, depth)

    monkeypatch.setattr(v2, "_strict_tensor", spy)
    for datatype, shape, data in [("FP64", [-1, 2], b"[[1.5, 2], [3e2, -4E-1]]"),
                                  ("INT8", [-1], b"[127, -128]"),
                                  ("UINT64", [-1], b"[18446744073709551615]")]:
        assert decoded(datatype, shape, data)[0] != "refused"
    assert strict == []
    decoded("FP64", [-1], b"[1.0, true]")  # a boolean: the strict decoder names it
    assert strict == [b"[1.0, true]"]


@pytest.mark.parametrize("shape, message", [
    ([1] * 65, "input 'x': shape has 65 dimensions, more than 32"),
    ([1] * 33, "input 'x': shape has 33 dimensions, more than 32"),
    ([0, 2**62], r"input 'x': shape \[0, 4611686018427387904\] is too large"),
    ([2**62, 0], r"input 'x': shape \[4611686018427387904, 0\] is too large"),
    ([2**40, 2**40], r"is too large: its non-zero sizes multiply to more than 2147483647"),
    ([3, -1], r"input 'x': shape \[3, -1\] has a negative size"),
])
def test_a_shape_numpy_cannot_make_is_refused_naming_the_input(
        shape: list[int], message: str) -> None:
    """Before: the shape reached numpy's reshape, which raised (HTTP 500)."""
    from baton.errors import RequestError

    body = msgspec.json.encode({"inputs": [{"name": "x", "shape": shape, "datatype": "FP64",
                                            "data": []}]})
    with pytest.raises(RequestError, match=message) as err:
        v2.parse_request(body)
    assert err.value.code == "BAD_REQUEST"
    assert err.value.details == {"field": "inputs.x.shape"}


def test_the_largest_shapes_allowed_still_decode() -> None:
    req = v2.parse_request(msgspec.json.encode({"inputs": [
        {"name": "x", "shape": [1] * 31 + [2], "datatype": "FP64", "data": [1.0, 2.0]}]}))
    assert req.inputs[0].shape == [1] * 31 + [2]


def test_an_input_given_twice_is_refused_by_its_name() -> None:
    from baton.contract.spec import Contract, FieldSpec
    from baton.errors import RequestError

    contract = Contract("records", (FieldSpec("a", "float"), FieldSpec("b", "float")),
                        (FieldSpec("y", "float"),))
    one = {"name": "b", "shape": [1], "datatype": "FP64", "data": [1.0]}
    req = v2.parse_request(msgspec.json.encode({"inputs": [
        {**one, "name": "a"}, one, one]}))
    with pytest.raises(RequestError, match="inputs repeat a name: 'b' is given more than "
                       "once") as err:
        v2.decode_request(contract, req)
    assert err.value.details == {"field": "inputs.b"}


@pytest.mark.parametrize("shape", [[], [2, 2], [2, 1, 1]])
def test_a_records_input_of_another_shape_than_one_column_is_refused(
        shape: list[int]) -> None:
    """A shape of [] was counted as 0 rows: 'has 1 values, other inputs have 0'."""
    from baton.contract.spec import Contract, FieldSpec

    contract = Contract("records", (FieldSpec("w", "float"),), (FieldSpec("y", "float"),))
    req = v2.parse_request(msgspec.json.encode({"inputs": [
        {"name": "w", "shape": shape, "datatype": "FP64", "data": [1.0]}]}))
    with pytest.raises(ContractViolation, match="input 'w' must be one column") as err:
        v2.decode_request(contract, req)
    assert err.value.violations[0]["expected"] == "shape [n] or [n, 1]"
