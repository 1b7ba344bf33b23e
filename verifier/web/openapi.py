"""The OpenAPI 3 document, assembled from the operations the app's views carry, and /openapi.json.

Each view states its own operation right under its route, with `@operation({...})`; a
blueprint's own component schemas are its `openapi_schemas` dict. `build_spec(app)` walks
the app's URL map, so every registered route appears and nothing else does. Shared pieces
live here: schemas `Error`, `Decision`, `ModelFields`, `Timings`; responses `BadRequest`,
`PayloadTooLarge`, `UnsupportedMediaType`, `Unprocessable`, `NotCalibrated`; parameters
`Threshold`, `TargetFmr`, `Modality` (and `MODALITY`, the field's schema in request bodies).
"""

import re

from flask import Blueprint, current_app, jsonify

from verifier.enrollment.keys import HEADER

VERSION = "1.0.0"
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def operation(spec):
    """Attach the OpenAPI operation object `spec` to a view; put it under the route decorator."""
    def attach(view):
        view.openapi = spec
        return view
    return attach


def ref(kind, name):
    return {"$ref": f"#/components/{kind}/{name}"}


def json_content(schema):
    return {"application/json": {"schema": schema}}


def error_response(description):
    return {"description": description, "content": json_content(ref("schemas", "Error"))}


MODALITY = {"type": "string", "example": "face",
            "description": "The served modality (bundle) to use: `face`, `signature`, ... as listed by "
                           "GET /v1/modalities; absent: the default (first) one. Another name answers 400 "
                           "`unknown_modality`."}

NUMBER_OPTIONS = {
    "threshold": {"type": "number", "minimum": 0,
                  "description": "Decide with this distance threshold instead of the calibrated one "
                                 "(policy becomes `request:threshold=...`)."},
    "target_fmr": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                   "maximum": 1,
                   "description": "Decide at the threshold where the calibration's dev FMR is at most "
                                  "this (policy becomes `request:target_fmr=...`); 422 if the "
                                  "calibration cannot support it."},
}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
                                 "properties": {"code": {"type": "string", "example": "unsupported_image"},
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
        "type": "object", "required": ["modality", "model", "calibration_id", "profile", "metric", "backend"],
        "properties": {
            "modality": {"type": "string", "example": "face", "description": "The modality that answered."},
            "model": {"type": "string", "description": "Bundle id (content hash)."},
            "calibration_id": {"type": "string", "nullable": True},
            "profile": {"type": "string", "example": "face"},
            "metric": {"type": "string", "enum": ["euclidean", "cosine"]},
            "backend": {"type": "string", "example": "tflite (ai_edge_litert)"},
        },
    },
    "Timings": {
        "type": "object", "description": "Milliseconds spent in the worker, by step.",
        "additionalProperties": {"type": "number"},
    },
}

RESPONSES = {
    "BadRequest": error_response("Missing field, zero-byte image, bad base64 or JSON, bad option, or a "
                                 "modality the service does not serve (`unknown_modality`)."),
    "PayloadTooLarge": error_response("Request, image bytes, image pixels (each image's, "
                                      "or all of a request's by their headers) or image count over the limit."),
    "UnsupportedMediaType": error_response("Not multipart/form-data or application/json, or not an image."),
    "Unprocessable": error_response("Corrupt or too small image, no face found, or an override the "
                                    "calibration cannot honour."),
    "NotCalibrated": error_response("The bundle is not calibrated or could not be loaded."),
}

SECURITY_SCHEMES = {"ApiKey": {"type": "apiKey", "in": "header", "name": HEADER,
                               "description": "`python -m verifier keys create --name NAME --scope read|write`; "
                                              "which routes need it: see verifier.web.auth."}}

PARAMETERS = {
    "Threshold": {"name": "threshold", "in": "query", "required": False, "schema": NUMBER_OPTIONS["threshold"]},
    "TargetFmr": {"name": "target_fmr", "in": "query", "required": False, "schema": NUMBER_OPTIONS["target_fmr"]},
    "Modality": {"name": "modality", "in": "query", "required": False, "schema": MODALITY},
}

INPUT_ERRORS = {status: ref("responses", name) for status, name in (
    ("400", "BadRequest"), ("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType"),
    ("422", "Unprocessable"), ("503", "NotCalibrated"))}


def openapi_path(rule):
    """A Flask rule (/v1/subjects/<subject_id>) as an OpenAPI path (/v1/subjects/{subject_id})."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def build_spec(app):
    """The complete document: every routed view's operation, with the shared and blueprint components."""
    paths = {}
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions[rule.endpoint], "openapi", None)
        if spec is None:
            continue
        for method in sorted(rule.methods - IGNORED_METHODS):
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = spec
    schemas = dict(SCHEMAS)
    for blueprint in app.blueprints.values():
        schemas.update(getattr(blueprint, "openapi_schemas", {}))
    return {
        "openapi": "3.0.3",
        "info": {"title": "Identity verification service", "version": VERSION,
                 "description": "Siamese-embedding verification with calibrated decisions. Every error is "
                                "JSON `{\"error\": {\"code\", \"message\"}}`."},
        "paths": paths,
        "components": {"schemas": schemas, "responses": RESPONSES, "parameters": PARAMETERS,
                       "securitySchemes": SECURITY_SCHEMES},
    }


bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
@operation({"summary": "This document", "operationId": "openapi", "tags": ["service"],
            "responses": {"200": {"description": "OpenAPI 3 document.", "content": json_content({"type": "object"})}}})
def openapi():
    """The OpenAPI 3 description of every route."""
    return jsonify(build_spec(current_app))
