"""Pair verification and service routes: /v1/verify, /v1/verify/batch, health, metrics, OpenAPI."""

import time

from flask import Blueprint, Response, current_app, jsonify

from verifier.core.errors import VerifierError
from verifier.web import metrics
from verifier.web.app import get_scorer, scorer_holder
from verifier.web.inputs import decode_field, images_from_request, options_from_request, raw_fields

bp = Blueprint("verify", __name__)


def _ms_since(start):
    return round((time.perf_counter() - start) * 1000.0, 3)


@bp.post("/v1/verify")
def verify():
    """Two images -> distance, decision, calibrated confidence, threshold and the policy behind it."""
    start = time.perf_counter()
    options = options_from_request()
    scorer = get_scorer()
    scorer.resolve(**options)  # 503 uncalibrated / 422 bad override before any decoding
    images = images_from_request(("image_a", "image_b"))
    decoded = _ms_since(start)
    (decision,), timings = scorer.verify([images["image_a"]], [images["image_b"]], **options,
                                         names=["image_a", "image_b"])
    metrics.record_decisions([decision])
    return jsonify({**decision, **scorer.describe(),
                    "timings_ms": {"decode": decoded, **timings, "total": _ms_since(start)}})


@bp.post("/v1/verify/batch")
def verify_batch():
    """Many pairs: image_a[i] with image_b[i] (repeated multipart fields or JSON arrays), one batch."""
    start = time.perf_counter()
    options = options_from_request()
    scorer = get_scorer()
    scorer.resolve(**options)
    limit = current_app.config["MAX_BATCH_PAIRS"]
    fields = {name: raw_fields(name) for name in ("image_a", "image_b")}
    for name, values in fields.items():
        if not values:
            raise VerifierError(f"missing field {name!r}", code="missing_field")
    count_a, count_b = len(fields["image_a"]), len(fields["image_b"])
    if count_a != count_b:
        raise VerifierError(f"image_a has {count_a} images and image_b {count_b}; pairs need equal counts",
                            code="unpaired_images", status=422)
    if count_a > limit:
        raise VerifierError(f"{count_a} pairs in one request; the limit is {limit}",
                            code="too_many_pairs", status=413)
    images = {name: [decode_field(f"{name}[{i}]", data) for i, data in enumerate(values)]
              for name, values in fields.items()}
    decoded = _ms_since(start)
    names = [f"{name}[{i}]" for name in ("image_a", "image_b") for i in range(count_a)]
    decisions, timings = scorer.verify(images["image_a"], images["image_b"], **options, names=names)
    metrics.record_decisions(decisions)
    return jsonify({"results": decisions, "count": len(decisions), **scorer.describe(),
                    "timings_ms": {"decode": decoded, **timings, "total": _ms_since(start)}})


@bp.get("/healthz")
def healthz():
    """The process answers HTTP (says nothing about the model: see /readyz)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 once this worker's scorer is loaded and warm; 503 with the reason before that."""
    holder = scorer_holder()
    scorer = holder.scorer
    if scorer is None or not scorer.warm:
        message = holder.error.message if holder.error else "the model is not loaded yet"
        response = jsonify({"error": {"code": "not_ready", "message": message}})
        response.status_code = 503
        return response
    return jsonify({"status": "ready", **scorer.describe(), "calibrated": scorer.calibration is not None,
                    "fast_path_max_abs_diff": scorer.agreement})


@bp.get("/metrics")
def metrics_text():
    """Prometheus text: requests, latency histogram and decisions, summed over workers."""
    scorer = scorer_holder().scorer
    info = None if scorer is None else {key: value or "" for key, value in scorer.describe().items()}
    return Response(metrics.render(current_app.config["METRICS_DIR"], info), content_type=metrics.CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of every route, enrollment's included."""
    from verifier.web.openapi import build_spec

    return jsonify(build_spec())
