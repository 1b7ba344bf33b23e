"""Image similarity search over the catalogue (the enrollment store): the k nearest images.

    POST /v1/search    one probe under `image`, optional `k` (1-100, default 10) -> the k most
                       similar stored images, nearest first

The catalogue's items are subjects and its images their templates, so a search answers single
images, not subjects (POST /v1/identify answers subjects). Each result names its item
(`subject_id`) and image (`template_id`), with the distance and the calibrated confidence that
the probe and that image are the same item: a 1:1 pair, scored with the bundle's top-level
calibration exactly as /v1/verify scores a pair. Only the request modality's items are searched,
with its bundle's templates. Nothing stored for it: 404 `empty_catalogue`. `k` out of range or
not an integer: 400 `invalid_option`. Needs a `read` key once a key was ever created, as identify.
"""

from flask import Blueprint, jsonify

from verifier.enrollment.keys import READ
from verifier.enrollment.service import MAX_TOP_K, SEARCH_K, check_top_k
from verifier.web.auth import AUTH_ERRORS, SECURITY, needs_key
from verifier.web.extensions import describe, get_service
from verifier.web.inputs import as_int, images_from_request, options_from_request, request_modality
from verifier.web.openapi import INPUT_ERRORS, MODALITY, error_response, json_content, operation, ref

bp = Blueprint("search", __name__)

K_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": SEARCH_K,
            "description": f"How many images to return (1-{MAX_TOP_K})."}

bp.openapi_schemas = {
    "SearchResult": {"allOf": [ref("schemas", "ModelFields"), {
        "type": "object", "required": ["results", "k", "threshold", "policy", "catalogue"], "properties": {
            "results": {"type": "array", "description": "The nearest stored images, nearest first.", "items": {
                "type": "object", "required": ["rank", "subject_id", "template_id", "distance", "confidence",
                                               "decision"],
                "properties": {
                    "rank": {"type": "integer", "minimum": 1},
                    "subject_id": {"type": "string", "description": "The catalogue item the image belongs to."},
                    "template_id": {"type": "string", "description": "The stored image (template)."},
                    "distance": {"type": "number", "description": "As /v1/verify computes it for the pair."},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1,
                                   "description": "Calibrated probability that the probe and this image show "
                                                  "the same item (the pair calibration, as /v1/verify)."},
                    "decision": {"type": "string", "enum": ["same", "different"]}}}},
            "k": {"type": "integer"}, "threshold": {"type": "number"}, "policy": {"type": "string"},
            "catalogue": {"type": "object", "properties": {"items": {"type": "integer"},
                                                           "images": {"type": "integer"}}},
            "timings_ms": ref("schemas", "Timings")}}]},
}

BODY_OPTIONS = {"k": {"type": "integer"}, "threshold": {"type": "number"}, "target_fmr": {"type": "number"},
                "modality": MODALITY}


def _body():
    binary, text = {"type": "string", "format": "binary"}, {"type": "string", "format": "byte"}
    return {"required": True, "content": {
        content: {"schema": {"type": "object", "required": ["image"], "properties": {"image": image, **BODY_OPTIONS}}}
        for content, image in (("multipart/form-data", binary), ("application/json", text))}}


@bp.post("/v1/search")
@needs_key(READ)
@operation({"summary": "Similarity search: the k stored images most like a probe", "operationId": "search",
            "tags": ["enrollment"],
            "description": "Searches the request modality's catalogue (subjects are items, their templates the "
                           "images). Needs an active key in the X-API-Key header once an API key was ever created.",
            "security": SECURITY,
            "parameters": [{"name": "k", "in": "query", "schema": K_SCHEMA}, ref("parameters", "Threshold"),
                           ref("parameters", "TargetFmr"), ref("parameters", "Modality")],
            "requestBody": _body(),
            "responses": {"200": {"description": "The nearest images.",
                                  "content": json_content(ref("schemas", "SearchResult"))},
                          **AUTH_ERRORS, **INPUT_ERRORS,
                          "404": error_response("No image of the request's modality and bundle is stored "
                                                "(`empty_catalogue`).")}})
def search():
    """A probe (field `image`) -> the `k` nearest catalogue images (default 10)."""
    options = options_from_request(("threshold", "target_fmr", "k"))
    k = check_top_k(as_int(options.pop("k", SEARCH_K)), "k")
    modality = request_modality()
    service = get_service(modality)
    service.scorer.rule(**options)  # bad options fail before decoding, as in identify
    probe = images_from_request(("image",))["image"]
    result = service.search(probe, k=k, **options)
    return jsonify({**result, **describe(modality)})
