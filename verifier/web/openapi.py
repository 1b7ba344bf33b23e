"""The OpenAPI 3 document of the service, built from plain dicts.

Enrollment's routes come from `verifier.web.subjects.OPENAPI_PATHS` (and, if it defines
one, `OPENAPI_SCHEMAS`, merged into components/schemas). Its path items may reference
the shared components defined here: schemas `Error`, `Decision`, `ModelFields`, `Timings`,
`ImagePairMultipart`, `ImagePairJson`; responses `BadRequest`, `PayloadTooLarge`,
`UnsupportedMediaType`, `Unprocessable`, `NotCalibrated`; parameters `Threshold`, `TargetFmr`.
"""

from verifier.web import subjects

VERSION = "1.0.0"


def _ref(kind, name):
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema):
    return {"application/json": {"schema": schema}}


def _error_response(description):
    return {"description": description, "content": _json(_ref("schemas", "Error"))}


NUMBER_OPTIONS = {
    "threshold": {"type": "number", "minimum": 0,
                  "description": "Decide with this distance threshold instead of the calibrated one "
                                 "(policy becomes `request:threshold=...`)."},
    "target_fmr": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1,
                   "description": "Decide at the threshold where the calibration's dev FMR is at most "
                                  "this (policy becomes `request:target_fmr=...`); 422 if the "
                                  "calibration cannot support it."},
}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "example": "unsupported_image"},
            "message": {"type": "string"}}}},
    },
    "Decision": {
        "type": "object", "required": ["distance", "decision", "confidence", "threshold", "policy"],
        "properties": {
            "distance": {"type": "number", "description": "Embedding distance; smaller is more alike."},
            "decision": {"type": "string", "enum": ["same", "different"],
                         "description": "`same` when distance <= threshold."},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1,
                           "description": "Calibrated probability that the pair is the same identity, "
                                          "under the prior stated in calibration.json."},
            "threshold": {"type": "number"},
            "policy": {"type": "string", "example": "eer",
                       "description": "What set the threshold: the calibration's policy or `request:...`."},
        },
    },
    "ModelFields": {
        "type": "object", "required": ["model", "calibration_id", "profile", "metric", "backend"],
        "properties": {
            "model": {"type": "string", "description": "Bundle id (content hash)."},
            "calibration_id": {"type": "string", "nullable": True},
            "profile": {"type": "string", "example": "face"},
            "metric": {"type": "string", "enum": ["euclidean", "cosine"]},
            "backend": {"type": "string", "example": "tflite (ai_edge_litert)"},
        },
    },
    "Timings": {
        "type": "object", "description": "Milliseconds spent in the worker.",
        "properties": {key: {"type": "number"} for key in ("decode", "embed", "decide", "total")},
    },
    "VerifyResult": {"allOf": [
        _ref("schemas", "Decision"), _ref("schemas", "ModelFields"),
        {"type": "object", "required": ["timings_ms"], "properties": {"timings_ms": _ref("schemas", "Timings")}},
    ]},
    "BatchResult": {"allOf": [
        _ref("schemas", "ModelFields"),
        {"type": "object", "required": ["results", "count", "timings_ms"], "properties": {
            "results": {"type": "array", "items": _ref("schemas", "Decision")},
            "count": {"type": "integer"},
            "timings_ms": _ref("schemas", "Timings")}},
    ]},
    "ImagePairMultipart": {
        "type": "object", "required": ["image_a", "image_b"],
        "properties": {"image_a": {"type": "string", "format": "binary"},
                       "image_b": {"type": "string", "format": "binary"}, **NUMBER_OPTIONS},
    },
    "ImagePairJson": {
        "type": "object", "required": ["image_a", "image_b"],
        "properties": {"image_a": {"type": "string", "format": "byte", "description": "Base64 (a data: URL is accepted)."},
                       "image_b": {"type": "string", "format": "byte"}, **NUMBER_OPTIONS},
    },
    "ImageBatchMultipart": {
        "type": "object", "required": ["image_a", "image_b"],
        "description": "Repeat image_a and image_b; the i-th of each form a pair.",
        "properties": {"image_a": {"type": "array", "items": {"type": "string", "format": "binary"}},
                       "image_b": {"type": "array", "items": {"type": "string", "format": "binary"}},
                       **NUMBER_OPTIONS},
    },
    "ImageBatchJson": {
        "type": "object", "required": ["image_a", "image_b"],
        "properties": {"image_a": {"type": "array", "items": {"type": "string", "format": "byte"}},
                       "image_b": {"type": "array", "items": {"type": "string", "format": "byte"}},
                       **NUMBER_OPTIONS},
    },
    "Ready": {"allOf": [_ref("schemas", "ModelFields"), {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["ready"]},
        "calibrated": {"type": "boolean"},
        "fast_path_max_abs_diff": {"type": "number", "nullable": True}}}]},
}

RESPONSES = {
    "BadRequest": _error_response("Missing field, zero-byte image, bad base64 or JSON, bad option."),
    "PayloadTooLarge": _error_response("Request, image bytes, image pixels or pair count over the limit."),
    "UnsupportedMediaType": _error_response("Not multipart/form-data or application/json, or not an image."),
    "Unprocessable": _error_response("Corrupt or too small image, or an override the calibration cannot honour."),
    "NotCalibrated": _error_response("The bundle is not calibrated or could not be loaded."),
}

PARAMETERS = {
    "Threshold": {"name": "threshold", "in": "query", "required": False, "schema": NUMBER_OPTIONS["threshold"]},
    "TargetFmr": {"name": "target_fmr", "in": "query", "required": False, "schema": NUMBER_OPTIONS["target_fmr"]},
}

ERRORS = {"400": _ref("responses", "BadRequest"), "413": _ref("responses", "PayloadTooLarge"),
          "415": _ref("responses", "UnsupportedMediaType"), "422": _ref("responses", "Unprocessable"),
          "503": _ref("responses", "NotCalibrated")}


def _verify_operation(summary, operation_id, multipart, body_json, result):
    return {"post": {
        "summary": summary, "operationId": operation_id, "tags": ["verify"],
        "parameters": [_ref("parameters", "Threshold"), _ref("parameters", "TargetFmr")],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": _ref("schemas", multipart)},
            "application/json": {"schema": _ref("schemas", body_json)}}},
        "responses": {"200": {"description": "Decision(s).", "content": _json(_ref("schemas", result))}, **ERRORS},
    }}


def _get(summary, operation_id, tag, ok, *, extra=None):
    return {"get": {"summary": summary, "operationId": operation_id, "tags": [tag],
                    "responses": {"200": ok, **(extra or {})}}}


PATHS = {
    "/v1/verify": _verify_operation("Verify that two images show the same identity", "verifyPair",
                                    "ImagePairMultipart", "ImagePairJson", "VerifyResult"),
    "/v1/verify/batch": _verify_operation("Verify many pairs in one request", "verifyBatch",
                                          "ImageBatchMultipart", "ImageBatchJson", "BatchResult"),
    "/healthz": _get("Liveness: the process answers", "healthz", "service", {
        "description": "Alive.", "content": _json({"type": "object", "properties": {"status": {"type": "string"}}})}),
    "/readyz": _get("Readiness: model loaded and warm in this worker", "readyz", "service",
                    {"description": "Ready.", "content": _json(_ref("schemas", "Ready"))},
                    extra={"503": _error_response("Not ready yet, or the bundle cannot be loaded.")}),
    "/metrics": _get("Prometheus metrics", "metrics", "service",
                     {"description": "Prometheus text exposition format 0.0.4.",
                      "content": {"text/plain": {"schema": {"type": "string"}}}}),
    "/openapi.json": _get("This document", "openapi", "service",
                          {"description": "OpenAPI 3 document.", "content": _json({"type": "object"})}),
}


def build_spec():
    """The complete document: these routes plus enrollment's, with shared components."""
    paths = dict(PATHS)
    for path, item in subjects.OPENAPI_PATHS.items():
        paths[path] = {**paths.get(path, {}), **item}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Identity verification service", "version": VERSION,
                 "description": "Siamese-embedding verification with calibrated decisions. Every error is "
                                "JSON `{\"error\": {\"code\", \"message\"}}`."},
        "paths": paths,
        "components": {"schemas": {**SCHEMAS, **getattr(subjects, "OPENAPI_SCHEMAS", {})},
                       "responses": RESPONSES, "parameters": PARAMETERS},
    }
