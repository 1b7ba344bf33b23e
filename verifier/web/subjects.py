"""Enrollment routes: subjects, their templates, 1:1 verify against a subject, 1:N identify.

    POST   /v1/subjects                   {"id", "metadata"} -> 201 the subject
    GET    /v1/subjects?limit=&after=     one page, in id order (keyset paging)
    GET    /v1/subjects/<id>              the subject with its template counts
    DELETE /v1/subjects/<id>              the subject and its templates
    POST   /v1/subjects/<id>/templates    images under `image` (repeated, or a JSON array)
    POST   /v1/subjects/<id>/verify       one probe under `image` against the subject
    POST   /v1/identify                   one probe under `image` -> top-k, or no match

Once any API key exists (`python -m verifier keys create`), every route here needs an
active key in `X-API-Key` (401 otherwise). With none, they are open: the quick start
binds to loopback only. The store is opened per worker process, after the fork.
"""

import os
import threading

from flask import Blueprint, current_app, jsonify, request

from verifier.core.errors import VerifierError
from verifier.enrollment.keys import HEADER, require_key
from verifier.enrollment.service import MAX_TOP_K, EnrollmentService, FailureToEnrol
from verifier.enrollment.store import DEFAULT_URL, check_subject_id, open_store
from verifier.web import metrics
from verifier.web.app import get_scorer
from verifier.web.inputs import (decode_field, images_from_request, json_body, options_from_request,
                                 raw_fields, request_kind)

bp = Blueprint("subjects", __name__)

MAX_ENROLL_IMAGES = 32
MAX_PAGE = 1000
_LOCK = threading.Lock()


def _keep_images():
    """KEEP_IMAGES in the app config, else VERIFIER_KEEP_IMAGES=1/true/yes in the environment."""
    value = current_app.config.get("KEEP_IMAGES", os.environ.get("VERIFIER_KEEP_IMAGES", ""))
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def get_store():
    """This app's store, opened (and migrated) on first use in this process."""
    store = current_app.extensions.get("verifier.store")
    if store is None:
        with _LOCK:
            store = current_app.extensions.get("verifier.store")
            if store is None:
                store = open_store(current_app.config.get("DATABASE_URL") or DEFAULT_URL,
                                   keep_images=_keep_images())
                current_app.extensions["verifier.store"] = store
    return store


def get_service():
    """This app's EnrollmentService (store + the worker's scorer)."""
    service = current_app.extensions.get("verifier.enrollment")
    if service is None:
        scorer, store = get_scorer(), get_store()
        with _LOCK:
            service = current_app.extensions.setdefault("verifier.enrollment", EnrollmentService(store, scorer))
    return service


@bp.before_request
def check_api_key():
    require_key(get_store(), request.headers.get(HEADER))


def _int_arg(name, default, low, high, source=None):
    value = (source or {}).get(name, request.args.get(name, default))
    try:
        number = int(value)
        if isinstance(value, bool) or isinstance(value, float) or not low <= number <= high:
            raise ValueError
    except (TypeError, ValueError):
        raise VerifierError(f"{name} must be an integer from {low} to {high}, got {value!r}",
                            code="invalid_option") from None
    return number


def _subject_view(subject, bundle_id):
    current = subject["templates_by_bundle"].get(bundle_id, 0)
    return {**subject, "current_templates": current,
            "needs_reenrollment": subject["template_count"] > current}


@bp.post("/v1/subjects")
def create_subject():
    """Create a subject from {"id": ..., "metadata": {...}}; 409 when the id exists."""
    if request_kind() != "json":
        raise VerifierError("send the subject as application/json", code="unsupported_media_type", status=415)
    body = json_body()
    unknown = sorted(set(body) - {"id", "metadata"})
    if unknown:
        raise VerifierError(f"unknown fields: {', '.join(unknown)} (expected id, metadata)", code="bad_json")
    if "id" not in body:
        raise VerifierError("missing field 'id'", code="missing_field")
    subject = get_store().create_subject(body["id"], body.get("metadata"))
    return jsonify(subject), 201


@bp.get("/v1/subjects")
def list_subjects():
    """A page of subjects: `limit` (1-1000, default 50) after the id `after`; `next_after` continues."""
    limit = _int_arg("limit", 50, 1, MAX_PAGE)
    subjects, next_after, total = get_store().list_subjects(limit, request.args.get("after"))
    return jsonify({"subjects": subjects, "next_after": next_after, "total": total, "limit": limit})


@bp.get("/v1/subjects/<subject_id>")
def get_subject(subject_id):
    """The subject with `template_count`, counts per bundle and whether it must be re-enrolled."""
    subject = get_store().get_subject(subject_id)
    return jsonify(_subject_view(subject, get_scorer().bundle_id))


@bp.delete("/v1/subjects/<subject_id>")
def delete_subject(subject_id):
    """Delete the subject and all its templates."""
    get_store().delete_subject(subject_id)
    return jsonify({"id": subject_id, "deleted": True})


@bp.post("/v1/subjects/<subject_id>/templates")
def add_templates(subject_id):
    """Enroll one or more images (field `image`); quality failures are reported and counted."""
    check_subject_id(subject_id)
    fields = raw_fields("image")
    if not fields:
        raise VerifierError("missing field 'image'", code="missing_field")
    if len(fields) > MAX_ENROLL_IMAGES:
        raise VerifierError(f"{len(fields)} images in one request; at most {MAX_ENROLL_IMAGES}",
                            code="too_many_images", status=413)
    images = [decode_field(f"image[{i}]", data) for i, data in enumerate(fields)]
    try:
        result = get_service().enroll(subject_id, images, raw=fields)
    except FailureToEnrol as exc:
        _count_enrollment(0, len(exc.failures))
        raise
    _count_enrollment(result["enrolled"], result["failure_to_enrol"])
    return jsonify(result), 201


def _count_enrollment(enrolled, failed):
    """Enrolled images and failures to enrol, in /metrics' decision counter (summed over workers)."""
    metrics.record_decisions([{"decision": "enrolled"}] * enrolled + [{"decision": "failure_to_enrol"}] * failed)


@bp.post("/v1/subjects/<subject_id>/verify")
def verify_subject(subject_id):
    """A probe (field `image`) against the subject's templates, fused by the calibrated rule."""
    options = options_from_request()
    service = get_service()
    service.scorer.resolve(**options, section=service.fusion())  # 503 / 422 before decoding
    probe = images_from_request(("image",))["image"]
    result = service.verify(subject_id, probe, **options)
    metrics.record_decisions([result])
    return jsonify({**result, **service.scorer.describe()})


@bp.post("/v1/identify")
def identify():
    """A probe (field `image`) -> the top-k subjects (`top_k`, default 5), `match` null when none passes."""
    options = options_from_request(("threshold", "target_fmr", "top_k"))
    top_k = _int_arg("top_k", 5, 1, MAX_TOP_K, options)
    options.pop("top_k", None)
    service = get_service()
    service.scorer.resolve(**options, section=service.fusion())
    probe = images_from_request(("image",))["image"]
    result = service.identify(probe, top_k=top_k, **options)
    metrics.record_decisions([{"decision": result["decision"]}])
    return jsonify({**result, **service.scorer.describe()})


# -- OpenAPI ------------------------------------------------------------------------------

def _ref(kind, name):
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema):
    return {"application/json": {"schema": schema}}


def _error(description):
    return {"description": description, "content": _json(_ref("schemas", "Error"))}


SUBJECT_ID = {"name": "subject_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"}}
AUTH = {"401": _error("API keys exist and X-API-Key is missing, wrong or revoked.")}
NOT_FOUND = {"404": _error("No such subject.")}
CONFLICT = {"409": _error("The subject has no templates, or only templates of another bundle "
                          "(`bundle_mismatch`): re-embed or re-enroll.")}
INPUT_ERRORS = {code: _ref("responses", name) for code, name in (
    ("400", "BadRequest"), ("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType"),
    ("422", "Unprocessable"), ("503", "NotCalibrated"))}
IMAGE_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, "threshold": {"type": "number"},
        "target_fmr": {"type": "number"}, "top_k": {"type": "integer"}}}},
    "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "byte"}, "threshold": {"type": "number"},
        "target_fmr": {"type": "number"}, "top_k": {"type": "integer"}}}}}}

OPENAPI_SCHEMAS = {
    "Subject": {"type": "object", "required": ["id", "metadata", "created", "template_count"], "properties": {
        "id": {"type": "string"}, "metadata": {"type": "object"}, "created": {"type": "string", "format": "date-time"},
        "template_count": {"type": "integer"},
        "templates_by_bundle": {"type": "object", "additionalProperties": {"type": "integer"}},
        "current_templates": {"type": "integer", "description": "Templates made by the bundle now served."},
        "needs_reenrollment": {"type": "boolean"}}},
    "Enrollment": {"type": "object", "properties": {
        "subject_id": {"type": "string"}, "template_ids": {"type": "array", "items": {"type": "string"}},
        "enrolled": {"type": "integer"}, "failure_to_enrol": {"type": "integer"},
        "failures": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "reason": {"type": "string"}}}},
        "model": {"type": "string"}}},
    "SubjectVerifyResult": {"allOf": [_ref("schemas", "Decision"), _ref("schemas", "ModelFields"), {
        "type": "object", "properties": {
            "subject_id": {"type": "string"},
            "fusion": {"type": "object", "description": "The calibrated fusion rule and templates used.",
                       "properties": {"rule": {"type": "string", "enum": ["mean", "min", "centroid"]},
                                      "templates": {"type": "integer"}}}}}]},
    "IdentifyResult": {"allOf": [_ref("schemas", "ModelFields"), {"type": "object", "properties": {
        "match": {"type": "string", "nullable": True, "description": "Best subject if it passes the threshold."},
        "decision": {"type": "string", "enum": ["match", "no_match"]},
        "candidates": {"type": "array", "items": {"type": "object", "properties": {
            "subject_id": {"type": "string"}, "distance": {"type": "number"},
            "decision": {"type": "string", "enum": ["same", "different"]},
            "confidence": {"type": "number"}, "templates": {"type": "integer"}}}},
        "threshold": {"type": "number"}, "policy": {"type": "string"},
        "fusion": {"type": "object", "properties": {"rule": {"type": "string"}}},
        "gallery": {"type": "object", "properties": {"subjects": {"type": "integer"},
                                                     "templates": {"type": "integer"}}}}}]},
}


def _op(summary, operation_id, ok, errors, **extra):
    return {"summary": summary, "operationId": operation_id, "tags": ["enrollment"],
            "description": "Needs an active key in the X-API-Key header once any API key exists.",
            "responses": {**ok, **AUTH, **errors}, **extra}


OPENAPI_PATHS = {
    "/v1/subjects": {
        "post": _op("Create a subject", "createSubject",
                    {"201": {"description": "Created.", "content": _json(_ref("schemas", "Subject"))}},
                    {"409": _error("The id is taken."), "400": _ref("responses", "BadRequest"),
                     "415": _ref("responses", "UnsupportedMediaType")},
                    requestBody={"required": True, "content": _json({
                        "type": "object", "required": ["id"],
                        "properties": {"id": {"type": "string"}, "metadata": {"type": "object"}}})}),
        "get": _op("List subjects, one page at a time", "listSubjects",
                   {"200": {"description": "A page.", "content": _json({"type": "object", "properties": {
                       "subjects": {"type": "array", "items": _ref("schemas", "Subject")},
                       "next_after": {"type": "string", "nullable": True}, "total": {"type": "integer"}}})}},
                   {"400": _ref("responses", "BadRequest")},
                   parameters=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": MAX_PAGE}},
                               {"name": "after", "in": "query", "schema": {"type": "string"}}]),
    },
    "/v1/subjects/{subject_id}": {
        "parameters": [SUBJECT_ID],
        "get": _op("A subject with its template counts", "getSubject",
                   {"200": {"description": "The subject.", "content": _json(_ref("schemas", "Subject"))}}, NOT_FOUND),
        "delete": _op("Delete a subject and its templates", "deleteSubject",
                      {"200": {"description": "Deleted."}}, NOT_FOUND),
    },
    "/v1/subjects/{subject_id}/templates": {
        "parameters": [SUBJECT_ID],
        "post": _op("Enroll images (repeat `image`, or a JSON array of base64)", "enrollTemplates",
                    {"201": {"description": "Stored; failures to enrol listed.",
                             "content": _json(_ref("schemas", "Enrollment"))}},
                    {**INPUT_ERRORS, **NOT_FOUND}, requestBody=IMAGE_BODY),
    },
    "/v1/subjects/{subject_id}/verify": {
        "parameters": [SUBJECT_ID],
        "post": _op("Verify a probe against a claimed subject (calibrated fusion rule)", "verifySubject",
                    {"200": {"description": "Decision.", "content": _json(_ref("schemas", "SubjectVerifyResult"))}},
                    {**INPUT_ERRORS, **NOT_FOUND, **CONFLICT}, requestBody=IMAGE_BODY),
    },
    "/v1/identify": {
        "post": _op("1:N: the top-k subjects for a probe, or no match", "identify",
                    {"200": {"description": "Candidates.", "content": _json(_ref("schemas", "IdentifyResult"))}},
                    INPUT_ERRORS, requestBody=IMAGE_BODY),
    },
}
