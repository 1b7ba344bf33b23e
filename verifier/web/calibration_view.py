"""GET /v1/calibration?modality=: what the page charts, read from a served bundle's calibration.json.

The dev operating points give the ROC and DET curves (thinned to at most `MAX_POINTS`)
and, being the step CDFs of the genuine and impostor distances, their histograms too.
The reliability tables and figures (with counts and intervals) are calibration.json's own.
"""

import numpy as np
from flask import Blueprint, jsonify, request

from verifier.core.errors import VerifierError
from verifier.web.extensions import describe, get_scorer, modality_name
from verifier.web.openapi import error_response, json_content, operation, ref

bp = Blueprint("calibration_view", __name__)

MAX_POINTS = 300
BINS = 24
TARGET_FMRS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.001, 0.0001)

bp.openapi_schemas = {
    "CalibrationView": {"allOf": [ref("schemas", "ModelFields"), {
        "type": "object",
        "required": ["policy", "threshold", "prior", "curve", "operating_point", "histogram", "reliability",
                     "figures", "target_fmrs"],
        "properties": {
            "policy": {"type": "string"}, "threshold": {"type": "number"},
            "prior": {"type": "number", "description": "The prior P(same) the confidence is stated under."},
            "protocol": {"type": "string", "nullable": True},
            "curve": {"type": "object", "description": "Dev operating points (thinned): FMR and FNMR by distance.",
                      "properties": {name: {"type": "array", "items": {"type": "number"}}
                                     for name in ("distance", "fmr", "fnmr")}},
            "operating_point": {"type": "object", "properties": {
                "threshold": {"type": "number"}, "fmr": {"type": "number"}, "fnmr": {"type": "number"}}},
            "histogram": {"type": "object", "description": "Dev distances binned, derived from the operating points.",
                          "properties": {"edges": {"type": "array", "items": {"type": "number"}},
                                         "genuine": {"type": "array", "items": {"type": "number"}},
                                         "impostor": {"type": "array", "items": {"type": "number"}},
                                         "unit": {"type": "string", "enum": ["count", "share"]}}},
            "reliability": {"type": "object", "description": "Reliability table per split (dev, eval).",
                            "additionalProperties": {"type": "array", "items": {"type": "object"}}},
            "figures": {"type": "object", "description": "calibration.json's metrics per split, with counts and "
                                                         "intervals.", "additionalProperties": {"type": "object"}},
            "target_fmrs": {"type": "array", "items": {"type": "number"},
                            "description": "target_fmr values this calibration supports."}}}]},
}


def _step(distance, values, at, before):
    """The step curve `values` (by ascending `distance`) at each of `at`; `before` left of the first point."""
    index = np.searchsorted(distance, at, side="right") - 1
    return np.where(index < 0, before, values[np.clip(index, 0, None)])


def histogram(points, genuine=None, impostor=None, bins=BINS):
    """Genuine and impostor distance histograms from the operating points' step CDFs.

    With the comparison counts the bins hold counts, else shares of each kind.
    """
    distance = np.asarray(points["distance"], np.float64)
    fmr, fnmr = np.asarray(points["fmr"], np.float64), np.asarray(points["fnmr"], np.float64)
    edges = np.linspace(distance[0], distance[-1], bins + 1)
    impostor_cdf = np.concatenate([[0.0], _step(distance, fmr, edges[1:], 0.0)])
    genuine_cdf = np.concatenate([[0.0], 1.0 - _step(distance, fnmr, edges[1:], 1.0)])
    counted = bool(genuine and impostor)
    scale_g, scale_i = (genuine, impostor) if counted else (1.0, 1.0)

    def bars(cdf, scale):
        values = np.diff(cdf) * scale
        return [round(float(v)) if counted else round(float(v), 6) for v in values]

    return {"edges": edges.tolist(), "genuine": bars(genuine_cdf, scale_g),
            "impostor": bars(impostor_cdf, scale_i), "unit": "count" if counted else "share"}


def thin(points, limit=MAX_POINTS):
    """At most `limit` operating points, evenly by index, keeping both ends."""
    n = len(points["distance"])
    keep = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
    return {name: [float(points[name][i]) for i in keep] for name in ("distance", "fmr", "fnmr")}


def supported_target_fmrs(scorer):
    """The usual target FMRs that the scorer honours on this calibration."""
    supported = []
    for target in TARGET_FMRS:
        try:
            scorer.rule(target_fmr=target)
        except VerifierError:
            continue
        supported.append(target)
    return supported


def calibration_view(calibration, target_fmrs):
    """The page's charts and figures from calibration.json's content."""
    points = calibration.get("operating_points") or {"distance": [], "fmr": [], "fnmr": []}
    metrics = calibration.get("metrics") or {}
    dev = metrics.get("dev") or {}
    threshold = float(calibration["threshold"])
    has_points = len(points["distance"]) > 0
    distance = np.asarray(points["distance"], np.float64)
    operating = {"threshold": threshold}
    if has_points:
        operating["fmr"] = float(_step(distance, np.asarray(points["fmr"]), [threshold], 0.0)[0])
        operating["fnmr"] = float(_step(distance, np.asarray(points["fnmr"]), [threshold], 1.0)[0])
    return {
        "policy": calibration["policy"], "threshold": threshold,
        "prior": calibration["confidence"]["prior"], "protocol": calibration.get("protocol"),
        "curve": thin(points), "operating_point": operating,
        "histogram": histogram(points, dev.get("genuine"), dev.get("impostor")) if has_points else {},
        "reliability": {split: figures["confidence"]["reliability"] for split, figures in metrics.items()
                        if (figures.get("confidence") or {}).get("reliability")},
        "figures": metrics, "target_fmrs": target_fmrs,
    }


@bp.get("/v1/calibration")
@operation({"summary": "A served modality's calibration: curves, histograms, reliability, figures",
            "operationId": "getCalibration", "tags": ["service"],
            "parameters": [ref("parameters", "Modality")],
            "responses": {"400": ref("responses", "BadRequest"), "200": {"description": "What the page charts.",
                                  "content": json_content(ref("schemas", "CalibrationView"))},
                          "503": error_response("The bundle is not calibrated or could not be loaded.")}})
def calibration():
    """A modality's calibration (`?modality=`, default the default one), shaped for charts."""
    modality = modality_name(request.args.get("modality") or None)
    scorer = get_scorer(modality)
    scorer.rule()  # 503 not_calibrated without calibration.json
    return jsonify({**describe(modality), **calibration_view(scorer.calibration, supported_target_fmrs(scorer))})
