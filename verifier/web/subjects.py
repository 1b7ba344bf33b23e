"""Enrollment routes: subjects, their templates, 1:1 verify against a subject, 1:N identify.

    POST   /v1/subjects                   {"id", "metadata"} -> 201 the subject
    GET    /v1/subjects?limit=&after=     one page, in id order (keyset paging)
    GET    /v1/subjects/<id>              the subject with its template counts
    GET    /v1/subjects/<id>/thumbnail    a small JPEG of a kept image (VERIFIER_KEEP_IMAGES=1)
    DELETE /v1/subjects/<id>              the subject and its templates
    POST   /v1/subjects/<id>/templates    images under `image` (repeated, or a JSON array)
    POST   /v1/subjects/<id>/verify       one probe under `image` against the subject
    POST   /v1/identify                   one probe under `image` -> top-k, or no match
    (POST  /v1/search                     the k nearest single images: verifier.web.search)

Each subject belongs to one modality (`POST /v1/subjects {"modality": ...}`; absent: the
default). The image routes take a `modality` field (form field, JSON key or query string;
absent: the default): enrolling into or verifying against a subject of another modality is a
409 `modality_mismatch` naming both, and identify searches only the request modality's
subjects. Subjects stored before modalities existed (NULL) belong to the default modality.

Once an API key was ever created (`python -m verifier keys create`), every route here
needs an active key in `X-API-Key` (401 otherwise, even after the last key is revoked):
`read` for lookups, verify and identify, `write` to create, enroll and delete (403 for a
read key); see `verifier.web.auth`. Before the first key they are open, which `serve`
allows on loopback only (or with --allow-anonymous). The store is opened per worker process, after the fork (see
`verifier.web.extensions`). Each view carries its OpenAPI operation (`@operation`).
"""

import cv2
from flask import Blueprint, current_app, jsonify, request

from verifier.core.errors import VerifierError
from verifier.core.images import decode_image
from verifier.enrollment.keys import READ, WRITE
from verifier.enrollment.service import MAX_TOP_K, TOP_K, FailureToEnrol, check_top_k
from verifier.enrollment.store import MAX_PAGE, PAGE_SIZE, SUBJECT_ID_PATTERN, NotFound, check_subject_id
from verifier.web import metrics
from verifier.web.auth import AUTH_ERRORS, SECURITY, needs_key
from verifier.web.extensions import default_modality, describe, get_scorer, get_service, get_store, modality_name, scorers
from verifier.web.inputs import (as_int, decode_list, images_from_request, json_body, options_from_request,
                                 raw_list, request_kind, request_modality)
from verifier.web.openapi import INPUT_ERRORS, MODALITY, error_response, json_content, operation, ref

bp = Blueprint("subjects", __name__)

MAX_ENROLL_IMAGES = 32
THUMBNAIL_SIDE = 128  # px, the longest side; smaller images are not enlarged
THUMBNAIL_CACHE = "private, max-age=3600"


def _modality_of(subject):
    """A stored subject's modality: its own, or the default one for subjects stored before modalities."""
    return subject.get("modality") or default_modality()


def _subject_view(subject):
    """The subject as the API shows it: its modality, and its templates made by that modality's bundle."""
    modality = _modality_of(subject)
    view = {**subject, "modality": modality}
    if "templates_by_bundle" not in subject:
        return view
    current = 0
    if subject["template_count"] and modality in scorers().holders:  # one no longer served has no current bundle
        current = subject["templates_by_bundle"].get(get_scorer(modality).bundle_id, 0)
    return {**view, "current_templates": current, "needs_reenrollment": subject["template_count"] > current}


def _thumbnail(data):
    """Kept image bytes -> a JPEG whose longest side is at most THUMBNAIL_SIDE, aspect kept."""
    config = current_app.config  # the limits it was enrolled under
    image = decode_image(data, max_bytes=config["MAX_IMAGE_BYTES"], max_pixels=config["MAX_PIXELS"])
    height, width = image.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    if scale < 1:
        image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _count_enrollment(enrolled, failed):
    """Enrolled images and failures to enrol, in /metrics' decision counter (summed over workers)."""
    metrics.record_decisions([{"decision": "enrolled"}] * enrolled + [{"decision": "failure_to_enrol"}] * failed)


# -- OpenAPI pieces these operations share --------------------------------------------------

SUBJECT = ref("schemas", "Subject")
SUBJECT_ID = {"name": "subject_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": SUBJECT_ID_PATTERN}}
COMMON_ERRORS = {**AUTH_ERRORS,
                 "503": error_response("The store cannot be reached, or the bundle is not loaded or calibrated.")}
NOT_FOUND = {"404": error_response("No such subject.")}
OPTIONS = {"threshold": {"type": "number"}, "target_fmr": {"type": "number"}, "modality": MODALITY}
MODALITY_PARAMETER = ref("parameters", "Modality")
MISMATCH = ("The subject belongs to another modality than the request's (`modality_mismatch`, naming both: "
            "send the subject's modality)")


def _image_body(extra=None, *, repeated=False):
    """Images under `image` (multipart files or base64 in JSON) and the options."""
    binary, text = {"type": "string", "format": "binary"}, {"type": "string", "format": "byte"}
    if repeated:
        binary, text = ({"oneOf": [binary, {"type": "array", "items": binary}]},
                        {"oneOf": [text, {"type": "array", "items": text}]})
    return {"required": True, "content": {
        content: {"schema": {"type": "object", "required": ["image"],
                             "properties": {"image": image, **(extra or {})}}}
        for content, image in (("multipart/form-data", binary), ("application/json", text))}}


def _op(summary, operation_id, ok, errors, **extra):
    return {"summary": summary, "operationId": operation_id, "tags": ["enrollment"],
            "description": "Needs an active key in the X-API-Key header once an API key was ever created.",
            "security": SECURITY, "responses": {**ok, **COMMON_ERRORS, **errors}, **extra}


bp.openapi_schemas = {
    "Subject": {"type": "object", "required": ["id", "metadata", "created", "modality", "template_count"],
                "properties": {
        "id": {"type": "string"}, "metadata": {"type": "object"}, "created": {"type": "string", "format": "date-time"},
        "modality": {"type": "string", "example": "face",
                     "description": "The modality the subject belongs to; only its bundle enrolls and compares it."},
        "template_count": {"type": "integer"},
        "templates_by_bundle": {"type": "object", "additionalProperties": {"type": "integer"}},
        "current_templates": {"type": "integer", "description": "Templates made by the bundle now served."},
        "needs_reenrollment": {"type": "boolean"}}},
    "Enrollment": {"type": "object", "required": ["subject_id", "modality", "template_ids", "enrolled", "failures",
                                                  "failure_to_enrol", "model"], "properties": {
        "subject_id": {"type": "string"}, "modality": {"type": "string"}, "template_ids": {"type": "array", "items": {"type": "string"}},
        "enrolled": {"type": "integer"}, "failure_to_enrol": {"type": "integer"},
        "failures": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "reason": {"type": "string"}}}},
        "model": {"type": "string"}, "timings_ms": ref("schemas", "Timings")}},
    "SubjectVerifyResult": {"allOf": [ref("schemas", "Decision"), ref("schemas", "ModelFields"), {
        "type": "object", "required": ["subject_id", "fusion"], "properties": {
            "subject_id": {"type": "string"},
            "fusion": {"type": "object", "description": "The calibrated fusion rule and templates used.",
                       "properties": {"rule": {"type": "string", "enum": ["mean", "min", "centroid"]},
                                      "templates": {"type": "integer"}}},
            "timings_ms": ref("schemas", "Timings")}}]},
    "IdentifyResult": {"allOf": [ref("schemas", "ModelFields"), {
        "type": "object", "required": ["match", "decision", "candidates", "threshold", "policy"], "properties": {
            "match": {"type": "string", "nullable": True, "description": "Best subject if it passes the threshold."},
            "decision": {"type": "string", "enum": ["match", "no_match"]},
            "candidates": {"type": "array", "items": {"type": "object", "properties": {
                "subject_id": {"type": "string"}, "distance": {"type": "number"},
                "decision": {"type": "string", "enum": ["same", "different"]},
                "confidence": {"type": "number"}, "templates": {"type": "integer"}}}},
            "threshold": {"type": "number"}, "policy": {"type": "string"},
            "fusion": {"type": "object", "properties": {"rule": {"type": "string"}}},
            "gallery": {"type": "object", "properties": {"subjects": {"type": "integer"},
                                                         "templates": {"type": "integer"}}},
            "timings_ms": ref("schemas", "Timings")}}]},
}


# -- routes ---------------------------------------------------------------------------------

@bp.post("/v1/subjects")
@needs_key(WRITE)
@operation(_op("Create a subject", "createSubject",
               {"201": {"description": "Created.", "content": json_content(SUBJECT)}},
               {"409": error_response("The id is taken."), "400": ref("responses", "BadRequest"),
                "415": ref("responses", "UnsupportedMediaType")},
               requestBody={"required": True, "content": json_content({
                   "type": "object", "required": ["id"],
                   "properties": {"id": {"type": "string"}, "metadata": {"type": "object"},
                                  "modality": MODALITY}})}))
def create_subject():
    """Create a subject from {"id": ..., "metadata": {...}, "modality": ...}; 409 when the id exists."""
    if request_kind() != "json":
        raise VerifierError("send the subject as application/json", code="unsupported_media_type", status=415)
    body = json_body()
    unknown = sorted(set(body) - {"id", "metadata", "modality"})
    if unknown:
        raise VerifierError(f"unknown fields: {', '.join(unknown)} (expected id, metadata, modality)",
                            code="bad_json")
    if "id" not in body:
        raise VerifierError("missing field 'id'", code="missing_field")
    modality = modality_name(body.get("modality"))
    subject = get_store().create_subject(body["id"], body.get("metadata"), modality=modality)
    return jsonify(_subject_view(subject)), 201


@bp.get("/v1/subjects")
@needs_key(READ)
@operation(_op("List subjects, one page at a time", "listSubjects",
               {"200": {"description": "A page.", "content": json_content({
                   "type": "object", "required": ["subjects", "next_after", "total", "limit"], "properties": {
                       "subjects": {"type": "array", "items": SUBJECT},
                       "next_after": {"type": "string", "nullable": True}, "total": {"type": "integer"},
                       "limit": {"type": "integer"}}})}},
               {"400": ref("responses", "BadRequest")},
               parameters=[{"name": "limit", "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": PAGE_SIZE}},
                           {"name": "after", "in": "query", "schema": {"type": "string"}},
                           {"name": "modality", "in": "query",
                            "schema": {**MODALITY, "description": "Only this modality's subjects (absent: all)."}}]))
def list_subjects():
    """A page of subjects: `limit` (1-1000, default 50) after the id `after`, of one `modality` if given."""
    limit = as_int(request.args.get("limit", PAGE_SIZE))
    modality = request.args.get("modality")
    modality = modality_name(modality) if modality else None
    subjects, next_after, total = get_store().list_subjects(limit, request.args.get("after"), modality=modality,
                                                            default_modality=default_modality())
    return jsonify({"subjects": [_subject_view(s) for s in subjects], "next_after": next_after, "total": total,
                    "limit": limit})


@bp.get("/v1/subjects/<subject_id>")
@needs_key(READ)
@operation(_op("A subject with its template counts", "getSubject",
               {"200": {"description": "The subject.", "content": json_content(SUBJECT)}}, NOT_FOUND,
               parameters=[SUBJECT_ID]))
def get_subject(subject_id):
    """The subject with its modality, `template_count`, counts per bundle and whether it must be re-enrolled."""
    subject = get_store().get_subject(subject_id)
    return jsonify(_subject_view(subject))


@bp.get("/v1/subjects/<subject_id>/thumbnail")
@needs_key(READ)
@operation(_op("A small JPEG of one of the subject's kept images", "getSubjectThumbnail",
               {"200": {"description": f"JPEG, longest side at most {THUMBNAIL_SIDE} px, from the first kept "
                                       "image of the templates of its modality's served bundle (else of any).",
                        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}},
               {"404": error_response("No such subject (`subject_not_found`), or no image of it is kept "
                                      "(`no_image`: images are kept only with VERIFIER_KEEP_IMAGES=1).")},
               parameters=[SUBJECT_ID]))
def subject_thumbnail(subject_id):
    """A thumbnail of the subject's first kept image, cached privately by the browser for an hour."""
    store = get_store()
    modality = _modality_of(store.get_subject(subject_id))
    bundle_id = get_scorer(modality).bundle_id if modality in scorers().holders else None
    data = store.subject_image(subject_id, bundle_id)
    if data is None:
        message = (f"subject {subject_id!r} has no kept image (no templates, or enrolled while images were not kept)"
                   if store.keep_images else
                   "images are not kept: start the service with VERIFIER_KEEP_IMAGES=1 to see thumbnails")
        raise VerifierError(message, code="no_image", status=404)
    return _thumbnail(data), 200, {"Content-Type": "image/jpeg", "Cache-Control": THUMBNAIL_CACHE}


@bp.delete("/v1/subjects/<subject_id>")
@needs_key(WRITE)
@operation(_op("Delete a subject and its templates", "deleteSubject",
               {"200": {"description": "Deleted.", "content": json_content({
                   "type": "object", "required": ["id", "deleted"],
                   "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean", "enum": [True]}}})}},
               NOT_FOUND, parameters=[SUBJECT_ID]))
def delete_subject(subject_id):
    """Delete the subject and all its templates."""
    get_store().delete_subject(subject_id)
    return jsonify({"id": subject_id, "deleted": True})


@bp.post("/v1/subjects/<subject_id>/templates")
@needs_key(WRITE)
@operation(_op("Enroll images (repeat `image`, or a JSON array of base64)", "enrollTemplates",
               {"201": {"description": "Stored; failures to enrol listed.",
                        "content": json_content(ref("schemas", "Enrollment"))}},
               {**INPUT_ERRORS, **NOT_FOUND, "409": error_response(MISMATCH + ".")},
               parameters=[SUBJECT_ID, MODALITY_PARAMETER],
               requestBody=_image_body({"modality": MODALITY}, repeated=True)))
def add_templates(subject_id):
    """Enroll one or more images (field `image`) with the request's modality; quality failures are reported."""
    check_subject_id(subject_id)
    service = get_service(request_modality())
    try:
        service.check_subject(subject_id)  # 409 modality_mismatch before any image work
    except NotFound:
        pass  # said (404) after the images are read, as before
    fields = raw_list("image")
    if len(fields) > MAX_ENROLL_IMAGES:
        raise VerifierError(f"{len(fields)} images in one request; at most {MAX_ENROLL_IMAGES}",
                            code="too_many_images", status=413)
    images = decode_list("image", fields)
    try:
        result = service.enroll(subject_id, images, raw=fields)
    except FailureToEnrol as exc:
        _count_enrollment(0, len(exc.failures))
        raise
    _count_enrollment(result["enrolled"], result["failure_to_enrol"])
    return jsonify(result), 201


@bp.post("/v1/subjects/<subject_id>/verify")
@needs_key(READ)
@operation(_op("Verify a probe against a claimed subject (calibrated fusion rule)", "verifySubject",
               {"200": {"description": "Decision.", "content": json_content(ref("schemas", "SubjectVerifyResult"))}},
               {**INPUT_ERRORS, **NOT_FOUND,
                "409": error_response("The subject has no templates, or only templates of another bundle "
                                      "(`bundle_mismatch`): re-embed or re-enroll. Or: " + MISMATCH + ".")},
               parameters=[SUBJECT_ID, ref("parameters", "Threshold"), ref("parameters", "TargetFmr"),
                           MODALITY_PARAMETER],
               requestBody=_image_body(OPTIONS)))
def verify_subject(subject_id):
    """A probe (field `image`) against the subject's templates, fused by the calibrated rule."""
    options = options_from_request()
    modality = request_modality()
    service = get_service(modality)
    service.rule(**options)  # 503 / 400 / 422 before decoding; the service checks them (again) itself
    try:
        service.check_subject(subject_id)  # 409 modality_mismatch before decoding
    except NotFound:
        pass  # said (404) by service.verify, after the probe is read, as before
    probe = images_from_request(("image",))["image"]
    result = service.verify(subject_id, probe, **options)
    metrics.record_decisions([result])
    return jsonify({**result, **describe(modality)})


@bp.post("/v1/identify")
@needs_key(READ)
@operation(_op("1:N: the top-k subjects of the request's modality for a probe, or no match", "identify",
               {"200": {"description": "Candidates.", "content": json_content(ref("schemas", "IdentifyResult"))}},
               INPUT_ERRORS,
               parameters=[ref("parameters", "Threshold"), ref("parameters", "TargetFmr"), MODALITY_PARAMETER,
                           {"name": "top_k", "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": TOP_K}}],
               requestBody=_image_body({**OPTIONS, "top_k": {"type": "integer"}})))
def identify():
    """A probe (field `image`) -> the top-k subjects (`top_k`, default 5), `match` null when none passes."""
    options = options_from_request(("threshold", "target_fmr", "top_k"))
    top_k = check_top_k(as_int(options.pop("top_k", TOP_K)))
    modality = request_modality()
    service = get_service(modality)
    service.rule(**options)  # as in verify_subject: bad options fail before decoding
    probe = images_from_request(("image",))["image"]
    result = service.identify(probe, top_k=top_k, **options)
    metrics.record_decisions([{"decision": result["decision"]}])
    return jsonify({**result, **describe(modality)})
