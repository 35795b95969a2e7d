"""An OpenAPI 3.1 document generated from the contracts of the models being served."""

from __future__ import annotations

from typing import Any

from baton import __version__
from baton.contract.jsonschema import field_schema, record_schema, tensor_schema
from baton.contract.spec import FieldSpec
from baton.errors import BatonError
from baton.serving import binary, v2
from baton.serving.service import Engine, ModelService

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 404: "Unknown model", 413: "Body too large",
            415: "Content-Encoding other than gzip or deflate",
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
                      **_errors(400, 404, 413, 415, 422, 500, 503)}}}}


def _v2_input_schema(svc: ModelService) -> dict[str, Any]:
    """Every contract input is required (the server answers 422 without one), each with
    the datatypes the server accepts for it."""
    items, required = [], []
    for spec in svc.contract.inputs:
        if isinstance(spec, FieldSpec):
            item = {"type": "object", "required": ["name", "shape", "datatype", "data"],
                    "properties": {"name": {"const": spec.name},
                                   "shape": {"type": "array", "items": {"type": "integer"}},
                                   "data": {"type": "array", "items": field_schema(spec)}}}
            declared = v2.field_datatype(spec)
        else:
            item, declared = tensor_schema(spec), spec.datatype
        item["properties"]["datatype"] = {"enum": v2.accepted_datatypes(declared)}
        items.append(item)
        required.append({"contains": {"type": "object", "required": ["name"],
                                      "properties": {"name": {"const": spec.name}}}})
    binary_flag = {"type": "boolean", "description": "Answer as binary tensor data"}
    return {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": binary_flag}},
        "inputs": {"type": "array", "minItems": len(items), "items": {"oneOf": items},
                   "allOf": required},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {
            "name": {"enum": list(svc.contract.output_names)},
            "parameters": {"type": "object", "additionalProperties": False,
                           "properties": {"binary_data": binary_flag}}}}}}}


_BINARY_BODY = {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"},
    "x-baton-framing": f"The binary tensor data extension: the JSON request (the "
                       f"application/json schema; an input may carry "
                       f"parameters.binary_data_size instead of data) in the first "
                       f"{binary.HEADER} bytes, then each binary input's bytes in order"}}


def _v2_paths(svc: ModelService) -> dict[str, Any]:
    op = {"post": {
        "summary": f"Open Inference Protocol inference on {svc.name}",
        "parameters": [{"name": binary.HEADER, "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Length of the JSON part of a body that carries "
                                       "binary tensor data"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _v2_input_schema(svc)}, **_BINARY_BODY}},
        "responses": {"200": {"description": "V2 inference response (binary outputs follow "
                                             f"the JSON when asked for; {binary.HEADER} "
                                             "then gives its length)"},
                      **_errors(400, 404, 413, 415, 422, 500, 503)}}}
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


def _feedback_paths(svc: ModelService) -> dict[str, Any]:
    """``POST /v1/models/NAME/feedback``, for a version that takes labels."""
    try:
        label = field_schema(svc.label_spec())
    except BatonError:  # no prediction log or no prediction field: the route answers 400
        return {}
    request = {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["id", "label"],
        "properties": {"id": {"type": "string", "description": "A prediction id, from the "
                                                             "answer's ids"},
                       "label": label}}}
    counts = {"type": "array", "items": {"type": "string"}}
    response = {"type": "object", "properties": {
        "accepted": {"type": "integer"}, "unknown": counts, "duplicates": counts,
        "quality": {"type": "object", "additionalProperties": {"type": "number"}},
        "labelled": {"type": "integer"},
        "metric_errors": {"type": "object", "additionalProperties": {"type": "string"}}}}
    return {f"/v1/models/{svc.name}/feedback": {"post": {
        "summary": f"Attach true labels to predictions of {svc.name}",
        "operationId": f"feedback_{svc.name}",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "What was attached, and the quality now",
                              "content": {"application/json": {"schema": response}}},
                      **_errors(400, 404, 413, 415, 422)}}}}


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
        paths.update(_feedback_paths(svc))
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
