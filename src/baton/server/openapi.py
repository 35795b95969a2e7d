"""An OpenAPI 3.1 document generated from the contracts of the models being served."""

from __future__ import annotations

from typing import Any

from baton import __version__
from baton.contract.jsonschema import field_schema, record_schema, tensor_schema
from baton.contract.spec import FieldSpec
from baton.serving.service import Engine, ModelService

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 404: "Unknown model", 413: "Body too large",
            422: "Contract violated", 500: "Exception inside the model",
            503: "Model not ready"}
    return {str(c): {"description": text[c],
                     "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _records_paths(svc: ModelService) -> dict[str, Any]:
    c = svc.contract
    request = {"type": "array", "minItems": 1,
               "items": record_schema(c.inputs, reject_unknown=c.unknown_fields == "reject")}
    response = {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "predictions": {"type": "array",
                        "items": record_schema(c.outputs, reject_unknown=True)}}}
    return {f"/v1/models/{svc.name}/predict": {"post": {
        "summary": f"Score records with {svc.name} {svc.version}",
        "description": svc.bundle.manifest.description,
        "operationId": f"predict_{svc.name}",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "One prediction per record, in order",
                              "content": {"application/json": {"schema": response}}},
                      **_errors(400, 404, 413, 422, 500, 503)}}}}


def _v2_input_schema(svc: ModelService) -> dict[str, Any]:
    items = []
    for spec in svc.contract.inputs:
        if isinstance(spec, FieldSpec):
            column = field_schema(spec)
            items.append({"type": "object", "required": ["name", "shape", "datatype", "data"],
                          "properties": {"name": {"const": spec.name},
                                         "shape": {"type": "array"},
                                         "datatype": {"type": "string"},
                                         "data": {"type": "array", "items": column}}})
        else:
            items.append(tensor_schema(spec))
    return {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": {"oneOf": items}},
        "outputs": {"type": "array", "items": {"type": "object",
                                               "properties": {"name": {"type": "string"}}}}}}


def _v2_paths(svc: ModelService) -> dict[str, Any]:
    op = {"post": {
        "summary": f"Open Inference Protocol inference on {svc.name}",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _v2_input_schema(svc)}}},
        "responses": {"200": {"description": "V2 inference response"},
                      **_errors(400, 404, 413, 422, 500, 503)}}}
    meta = {"get": {"summary": f"Metadata of {svc.name}",
                    "responses": {"200": {"description": "V2 model metadata"},
                                  **_errors(404)}}}
    base = f"/v2/models/{svc.name}"
    versioned = f"{base}/versions/{svc.version}"
    ready = {"get": {"summary": "Model readiness", "responses": {
        "200": {"description": "ready"}, **_errors(404, 503)}}}
    return {base: meta, f"{base}/ready": ready, f"{base}/infer": {
        **{k: {**v, "operationId": f"infer_{svc.name}"} for k, v in op.items()}},
        versioned: meta, f"{versioned}/ready": ready,
        f"{versioned}/infer": {k: {**v, "operationId": f"infer_{svc.name}_versioned"}
                               for k, v in op.items()}}


def openapi_document(engine: Engine, *, auth: bool = False) -> dict[str, Any]:
    """``auth``: the engine asks for tokens; every path but the probes then says so."""
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "Liveness",
                                    "responses": {"200": {"description": "live"}}}},
        "/v2/health/ready": {"get": {"summary": "Readiness of every model", "responses": {
            "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
    }
    for svc in engine.models.values():
        paths.update(_v2_paths(svc))
        if svc.contract.kind == "records":
            paths.update(_records_paths(svc))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Baton engine", "version": __version__,
                 "description": "Models served by this engine, with their contracts."},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error", "code"],
            "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                           "details": {"type": "object"}}}}},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token with the route's scope: infer, feedback, read or admin"}}
        doc["security"] = [{"bearer": []}]
        for probe in ("/v2/health/live", "/v2/health/ready"):
            paths[probe]["get"]["security"] = []
    return doc
