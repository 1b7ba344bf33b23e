"""Pair verification and service routes: /v1/verify, /v1/verify/batch, /healthz, /readyz, /v1/modalities.

Each view carries its OpenAPI operation (`@operation`, under the route); the schemas only
these operations use are `bp.openapi_schemas`.
"""


from flask import Blueprint, current_app, jsonify

from verifier.core.errors import VerifierError
from verifier.core.timing import Stopwatch
from verifier.enrollment.keys import READ
from verifier.web import metrics
from verifier.web.auth import AUTH_ERRORS, SECURITY, SERVICE, needs_key
from verifier.web.extensions import describe, get_scorer, scorers
from verifier.web.inputs import decode_lists, images_from_request, options_from_request, raw_list, request_modality
from verifier.web.openapi import (INPUT_ERRORS, MODALITY, NUMBER_OPTIONS, error_response, json_content, operation,
                                  ref)

bp = Blueprint("verify", __name__)

bp.openapi_schemas = {
    "VerifyResult": {"allOf": [
        ref("schemas", "Decision"), ref("schemas", "ModelFields"),
        {"type": "object", "required": ["timings_ms"], "properties": {"timings_ms": ref("schemas", "Timings")}},
    ]},
    "BatchResult": {"allOf": [
        ref("schemas", "ModelFields"),
        {"type": "object", "required": ["results", "count", "timings_ms"], "properties": {
            "results": {"type": "array", "items": ref("schemas", "Decision")},
            "count": {"type": "integer"},
            "timings_ms": ref("schemas", "Timings")}},
    ]},
    "ModalityReady": {"allOf": [ref("schemas", "ModelFields"), {
        "type": "object", "required": ["calibrated", "fast_path_max_abs_diff"], "properties": {
            "calibrated": {"type": "boolean"},
            "fast_path_max_abs_diff": {"type": "number", "nullable": True}}}]},
    "Ready": {"allOf": [ref("schemas", "ModalityReady"), {
        "type": "object", "required": ["status", "modalities"], "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "modalities": {"type": "object", "description": "Each served modality's model, by name; the "
                                                            "top-level fields are the default modality's.",
                           "additionalProperties": ref("schemas", "ModalityReady")}}}]},
}


def _verify_operation(summary, operation_id, result, *, batch=False):
    """A verify operation: image_a and image_b (one image each, or arrays for a batch) in either body."""
    binary, text = {"type": "string", "format": "binary"}, {"type": "string", "format": "byte"}
    if batch:
        binary, text = {"type": "array", "items": binary}, {"type": "array", "items": text}

    def body(field):
        return {"type": "object", "required": ["image_a", "image_b"],
                "properties": {"image_a": field, "image_b": field, **NUMBER_OPTIONS, "modality": MODALITY}}

    return {"summary": summary, "operationId": operation_id, "tags": ["verify"],
            "description": "Needs a key (scope read) in X-API-Key once an API key was ever created, unless "
                           "VERIFIER_PROTECT=enrollment.", "security": SECURITY,
            "parameters": [ref("parameters", "Threshold"), ref("parameters", "TargetFmr"),
                           ref("parameters", "Modality")],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body(binary)},
                                                          "application/json": {"schema": body(text)}}},
            "responses": {"200": {"description": "Decision(s).", "content": json_content(ref("schemas", result))},
                          **INPUT_ERRORS, **AUTH_ERRORS}}


@bp.post("/v1/verify")
@needs_key(READ, group=SERVICE)
@operation(_verify_operation("Verify that two images show the same identity", "verifyPair", "VerifyResult"))
def verify():
    """Two images -> distance, decision, calibrated confidence, threshold and the policy behind it."""
    clock = Stopwatch()
    options = options_from_request()
    modality = request_modality()  # 400 unknown_modality before anything else
    scorer = get_scorer(modality)
    scorer.rule(**options)  # 503 uncalibrated / 400 or 422 bad option before any decoding
    images = images_from_request(("image_a", "image_b"))
    decoded = clock.lap("decode")
    (decision,), timings = scorer.verify([images["image_a"]], [images["image_b"]], **options,
                                         names=["image_a", "image_b"])
    metrics.record_decisions([decision])
    return jsonify({**decision, **describe(modality),
                    "timings_ms": {"decode": decoded, **timings, "total": clock.total()}})


@bp.post("/v1/verify/batch")
@needs_key(READ, group=SERVICE)
@operation(_verify_operation("Verify many pairs in one request (image_a[i] with image_b[i])", "verifyBatch",
                             "BatchResult", batch=True))
def verify_batch():
    """Many pairs: image_a[i] with image_b[i] (repeated multipart fields or JSON arrays), one batch."""
    clock = Stopwatch()
    options = options_from_request()
    modality = request_modality()
    scorer = get_scorer(modality)
    scorer.rule(**options)
    limit = current_app.config["MAX_BATCH_PAIRS"]
    fields = {name: raw_list(name) for name in ("image_a", "image_b")}
    count_a, count_b = len(fields["image_a"]), len(fields["image_b"])
    if count_a != count_b:
        raise VerifierError(f"image_a has {count_a} images and image_b {count_b}; pairs need equal counts",
                            code="unpaired_images", status=422)
    if count_a > limit:
        raise VerifierError(f"{count_a} pairs in one request; the limit is {limit}",
                            code="too_many_pairs", status=413)
    images = decode_lists(fields)
    decoded = clock.lap("decode")
    names = [f"{name}[{i}]" for name in ("image_a", "image_b") for i in range(count_a)]
    decisions, timings = scorer.verify(images["image_a"], images["image_b"], **options, names=names)
    metrics.record_decisions(decisions)
    return jsonify({"results": decisions, "count": len(decisions), **describe(modality),
                    "timings_ms": {"decode": decoded, **timings, "total": clock.total()}})


@bp.get("/healthz")
@operation({"summary": "Liveness: the process answers", "operationId": "healthz", "tags": ["service"],
            "responses": {"200": {"description": "Alive.", "content": json_content({
                "type": "object", "required": ["status"], "properties": {"status": {"type": "string",
                                                                                    "enum": ["ok"]}}})}}})
def healthz():
    """The process answers HTTP (says nothing about the model: see /readyz)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@operation({"summary": "Readiness: every modality's model loaded and warm in this worker", "operationId": "readyz",
            "tags": ["service"],
            "responses": {"200": {"description": "Ready.", "content": json_content(ref("schemas", "Ready"))},
                          "503": error_response("Not ready yet, or a modality's bundle cannot be loaded.")}})
def readyz():
    """200 once this worker's scorers (every modality's) are loaded and warm; 503 with the reasons before that."""
    served = scorers()
    ready, waiting = {}, []
    for name, holder in served.holders.items():
        scorer = holder.scorer
        if scorer is None or not scorer.warm:
            reason = holder.error.message if holder.error else "the model is not loaded yet"
            waiting.append(f"{name}: {reason}" if len(served.holders) > 1 else reason)
            continue
        ready[name] = {**holder.describe(), "calibrated": scorer.calibration is not None,
                       "fast_path_max_abs_diff": scorer.agreement}
    if waiting:
        response = jsonify({"error": {"code": "not_ready", "message": "; ".join(waiting)}})
        response.status_code = 503
        return response
    return jsonify({"status": "ready", **ready[served.default], "modalities": ready})



bp.openapi_schemas["ModalityInfo"] = {
    "type": "object", "required": ["modality", "default", "ready"], "properties": {
        "modality": {"type": "string", "example": "face"},
        "default": {"type": "boolean", "description": "Whether requests that name no modality get this one."},
        "ready": {"type": "boolean", "description": "Whether its bundle loaded (else `error` says why)."},
        "model": {"type": "string", "description": "Bundle id (content hash)."},
        "calibration_id": {"type": "string", "nullable": True},
        "profile": {"type": "string"}, "metric": {"type": "string"}, "backend": {"type": "string"},
        "calibrated": {"type": "boolean"},
        "policy": {"type": "string", "nullable": True, "description": "The calibration's threshold policy."},
        "threshold": {"type": "number", "nullable": True, "description": "The calibrated pair threshold."},
        "subject_threshold": {"type": "number", "nullable": True,
                              "description": "The calibrated threshold of subject decisions (fusion), if any."},
        "error": {"type": "string", "nullable": True}}}


@bp.get("/v1/modalities")
@operation({"summary": "The served modalities (bundles): the default first", "operationId": "listModalities",
            "tags": ["service"],
            "responses": {"200": {"description": "Each served modality with its bundle and calibrated threshold.",
                                  "content": json_content({
                                      "type": "object", "required": ["default", "modalities"], "properties": {
                                          "default": {"type": "string"},
                                          "modalities": {"type": "array",
                                                         "items": ref("schemas", "ModalityInfo")}}})}}})
def modalities():
    """Every served modality, in order (the default first): bundle id, profile, calibrated thresholds."""
    served = scorers()
    out = []
    for name, holder in served.holders.items():
        item = {"modality": name, "default": name == served.default}
        try:
            scorer = holder.get()
        except VerifierError as exc:
            out.append({**item, "ready": False, "error": exc.message})
            continue
        calibration = scorer.calibration or {}
        fusion = calibration.get("fusion") or {}
        out.append({**item, "ready": True, **holder.describe(), "calibrated": bool(calibration),
                    "policy": calibration.get("policy"), "threshold": calibration.get("threshold"),
                    "subject_threshold": fusion.get("threshold"), "error": None})
    return jsonify({"default": served.default, "modalities": out})
