"""An error of the engine itself (a bug: not the request's, not the model's) is answered
500 / INTERNAL and still counted: in the request metrics with status 500 and in the errors
under stage ``internal``, over HTTP and over gRPC. Nothing real fails on demand here, so
the fault is put into the request's path by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from baton.bundle.loader import open_bundle
from baton.env.builder import EnvBuilder
from baton.monitor.metrics import EngineMetrics
from baton.serving.service import ModelService
from baton.settings import Settings
from tests.conftest import records_contract, write_bundle


@pytest.fixture
def svc(baton_home: Path, tmp_path: Path) -> ModelService:
    path = write_bundle(tmp_path / "m", name="m", contract=records_contract(
        inputs={"x": "float"}, outputs={"y": "float"}))
    settings = Settings(home=baton_home)
    bundle = open_bundle(path, settings.bundles_dir)
    svc = ModelService(bundle, EnvBuilder(settings.envs_dir).ensure(
        bundle.manifest.environment), settings)
    svc.instrument(EngineMetrics(), None)
    return svc


def counted(svc: ModelService, endpoint: str) -> tuple[int, int, dict[str, int]]:
    assert svc.metrics is not None
    return (svc.metrics.requests.get((endpoint, "500"), 0),
            svc.metrics.errors.get(("internal", "INTERNAL_ERROR"), 0),
            svc.metrics.snapshot()["errors_by_stage"])


async def broken(*args: Any) -> Any:
    raise RuntimeError("a bug in the engine")


def test_an_engine_error_over_http_is_counted_as_a_500(svc: ModelService) -> None:
    with pytest.raises(RuntimeError, match="a bug in the engine"):
        asyncio.run(svc.measured("infer", b"{}", broken))
    requests, errors, by_stage = counted(svc, "infer")
    assert (requests, errors, by_stage["internal"]) == (1, 1, 1)


def test_an_engine_error_over_grpc_is_counted_as_a_500(
        svc: ModelService, monkeypatch: pytest.MonkeyPatch) -> None:
    from tritonclient.grpc import service_pb2

    from baton.server import grpc_predict_v2_pb2 as pb
    from baton.server import grpc_service

    monkeypatch.setattr(svc, "predict", broken)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP64", shape=[1],
        contents=service_pb2.InferTensorContents(fp64_contents=[1.0]))
    msg = pb.ModelInferRequest.FromString(service_pb2.ModelInferRequest(
        model_name="m", inputs=[tensor]).SerializeToString())
    with pytest.raises(RuntimeError, match="a bug in the engine"):
        asyncio.run(grpc_service.infer(svc, msg))
    requests, errors, by_stage = counted(svc, grpc_service.ENDPOINT)
    assert (requests, errors, by_stage["internal"]) == (1, 1, 1)
