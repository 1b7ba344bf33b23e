"""Read images and decision options from a request: multipart uploads or JSON with base64.

Two request shapes are accepted everywhere:

    multipart/form-data   image fields as file uploads (a field may repeat for a list),
                          options as ordinary form fields
    application/json      {"image_a": "<base64>", ..., "threshold": 0.7}; a list of images
                          is a JSON array of base64 strings; "data:image/png;base64," is allowed

Each problem is its own clear error naming the field: 415 for another content type or
bytes that are not an image, 400 for a missing field, a zero-byte upload, bad base64 or a
JSON body nested too deep or holding a number too long, and the decoder's 413/422 for an
image that is too large, too small or broken. Every image's header is read before any is
decoded, so a request whose images together exceed MAX_REQUEST_PIXELS is refused (413)
before it costs a decode.
"""

import base64
import binascii
import json

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from verifier.core.errors import VerifierError
from verifier.core.images import decode_image, probe
from verifier.web.extensions import get_scorer, modality_name

OPTION_NAMES = ("threshold", "target_fmr")
MAX_NUMBER_DIGITS = 64  # longer JSON integers are refused before they reach float() and overflow


def _bad(message, code, status=400):
    return VerifierError(message, code=code, status=status)


def request_kind():
    """"multipart" or "json"; any other content type is a 415."""
    if request.mimetype == "multipart/form-data":
        return "multipart"
    if request.mimetype == "application/json":
        return "json"
    shown = request.mimetype or "none"
    raise _bad(f"content type {shown} is not accepted: send multipart/form-data (image files) "
               "or application/json (base64 images)", "unsupported_media_type", 415)


def json_body():
    """The request's JSON object (parsed once per request), or a 400 saying what is wrong with it."""
    if "json_body" in g:
        return g.json_body
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: its 413
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit and len(data) >= limit:
        raise RequestEntityTooLarge()  # a chunked body is cut at the limit without an error of its own
    try:
        body = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise _bad("request body is nested too deep to parse", "bad_json") from None
    except ValueError as exc:
        raise _bad(f"request body is not valid JSON: {exc}", "bad_json") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "bad_json")
    g.json_body = body
    return body


def _parse_int(text):
    """json.loads' integer parser, refusing integers longer than MAX_NUMBER_DIGITS."""
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _bad(f"request body holds an integer of {len(text)} digits; at most {MAX_NUMBER_DIGITS}",
                   "bad_json")
    return int(text)


def _limits():
    config = current_app.config
    return {"max_bytes": config["MAX_IMAGE_BYTES"], "max_pixels": config["MAX_PIXELS"],
            "min_side_wanted": _min_side_wanted()}


def _min_side_wanted():
    """How short an image's shorter side may become when decoded at reduced size, for the served profile.

    Twice the model input's longer side for profiles that take the image whole; four chip sides
    where a face is detected first, so a face a quarter of the frame still fills its chip.
    """
    profile = get_scorer(request_modality()).profile
    return 4 * profile.height if profile.detector else 2 * max(profile.height, profile.width)


def check_budget(named_fields):
    """Read every image's header (no decoding): the limits of each, then MAX_REQUEST_PIXELS over all (413)."""
    config = current_app.config
    total, budget = 0, config["MAX_REQUEST_PIXELS"]
    for name, data in named_fields:
        if not data:
            continue  # decode_field names the empty upload
        try:
            total += probe(data, max_bytes=config["MAX_IMAGE_BYTES"], max_pixels=config["MAX_PIXELS"]).pixels
        except VerifierError as exc:
            raise VerifierError(f"{name}: {exc.message}", code=exc.code, status=exc.status) from None
        if total > budget:
            raise VerifierError(f"the images of this request hold {total} pixels or more by their headers; "
                                f"the limit for one request is {budget}", code="request_too_many_pixels",
                                status=413)


def decode_field(name, data):
    """Bytes of one field -> decoded uint8 image; errors name the field."""
    if not data:
        raise _bad(f"{name}: the image is empty (0 bytes)", "empty_image")
    try:
        return decode_image(data, **_limits())
    except VerifierError as exc:
        raise VerifierError(f"{name}: {exc.message}", code=exc.code, status=exc.status) from None


def decode_base64(name, text):
    """Base64 text (standard or URL-safe, padding optional, or a data: URL) -> bytes, or a 400 naming the field."""
    if not isinstance(text, str):
        raise _bad(f"{name} must be a base64 string, got {type(text).__name__}", "bad_base64")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    max_chars = 4 * (current_app.config["MAX_IMAGE_BYTES"] // 3 + 1) + 4
    if len(text) > max_chars:
        raise _bad(f"{name}: the image is larger than {current_app.config['MAX_IMAGE_BYTES']} bytes",
                   "image_too_large", 413)
    text = "".join(text.split())
    altchars = b"-_" if ("-" in text or "_" in text) else None  # the URL-safe alphabet
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{name} is not valid base64", "bad_base64") from None


def _missing(name):
    return _bad(f"missing field {name!r}", "missing_field")


def raw_fields(name, *, body=None):
    """The bytes of every image sent under `name` (a list; empty when the field is absent)."""
    if request_kind() == "json":
        value = (body if body is not None else json_body()).get(name)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [decode_base64(f"{name}[{i}]" if isinstance(value, list) else name, item)
                for i, item in enumerate(values)]
    uploads = request.files.getlist(name)
    if not uploads and name in request.form:
        raise _bad(f"field {name!r} must be a file upload, not a text field", "missing_field")
    return [upload.read() for upload in uploads]


def images_from_request(names):
    """{name: decoded image} for fields that must each hold exactly one image."""
    body = json_body() if request_kind() == "json" else None
    raw = {}
    for name in names:
        fields = raw_fields(name, body=body)
        if not fields:
            raise _missing(name)
        if len(fields) > 1:
            raise _bad(f"field {name!r} holds {len(fields)} images; exactly one is expected", "too_many_images")
        raw[name] = fields[0]
    check_budget(raw.items())
    return {name: decode_field(name, data) for name, data in raw.items()}


def raw_list(name):
    """The bytes of every image under `name` (a repeated field or a JSON array); a 400 when there is none."""
    fields = raw_fields(name)
    if not fields:
        raise _missing(name)
    return fields


def decode_lists(lists):
    """{name: raw_list(name)} -> {name: decoded images}, after `check_budget` over all of them;
    each error names its image (`name[i]`)."""
    check_budget([(f"{name}[{i}]", data) for name, fields in lists.items() for i, data in enumerate(fields)])
    return {name: [decode_field(f"{name}[{i}]", data) for i, data in enumerate(fields)]
            for name, fields in lists.items()}


def decode_list(name, fields):
    """The images of `raw_list(name)`, decoded (see `decode_lists`)."""
    return decode_lists({name: fields})[name]


def as_int(value):
    """Form or query text holding an integer -> int; anything else as it is, for the option's owner to refuse."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def request_modality():
    """The served modality the request names in its `modality` field (a multipart form field, a JSON
    key, or the query string), or the default one when it names none; 400 `unknown_modality` otherwise."""
    if "modality" not in g:
        value = None
        if request.mimetype == "multipart/form-data":
            value = request.form.get("modality")
        elif request.mimetype == "application/json" and request.method != "GET":
            value = json_body().get("modality")
        if value is None or value == "":
            value = request.args.get("modality")
        g.modality = modality_name(value)
    return g.modality


def options_from_request(names=OPTION_NAMES):
    """{name: value} of the decision options present (form fields, JSON keys or query string)."""
    source = json_body() if request_kind() == "json" else request.form
    out = {}
    for name in names:
        value = source.get(name, request.args.get(name))
        if value is not None and value != "":
            out[name] = value
    return out
