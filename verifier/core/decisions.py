"""The decision rule's arithmetic: distance -> P(same), target FMR -> threshold, the rule of three.

`calibration/` fits these maps and writes their parameters into calibration.json;
the verifier only evaluates them here, with numpy, so serving needs no scikit-learn.

calibration.json's "confidence" is one of
    {"kind": "logistic", "a": float, "b": float, "prior": p, "train_prior": q}
        P(same | d) = sigmoid(a*d + b + logit(p) - logit(q))
    {"kind": "isotonic", "x": [distances ascending], "y": [P(same) at train_prior],
     "prior": p, "train_prior": q}
        piecewise-linear in d, then moved from prior q to prior p in log-odds.
"operating_points" is {"distance": [...ascending], "fmr": [...], "fnmr": [...]},
the dev ROC at every distinct distance (FMR non-decreasing in distance).
"""

import math

import numpy as np

_EPS = 1e-6


def _logit(p):
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def rule_of_three(n):
    """The 95% upper bound on a rate observed as 0 errors in `n` trials: 3/n (at most 1)."""
    return min(1.0, 3.0 / n) if n > 0 else 1.0


def rate_supported_by(target):
    """The fewest trials whose rule-of-three bound reaches `target`: ceil(3 / target)."""
    return math.ceil(3 / target * (1 - 1e-12))  # guard against 3/t landing a hair above an integer


def probability_same(distances, confidence):
    """Calibrated probability that each pair is genuine, under the map's stated prior."""
    d = np.asarray(distances, dtype=np.float64)
    shift = _logit(confidence["prior"]) - _logit(confidence["train_prior"])
    if confidence["kind"] == "logistic":
        return _sigmoid(confidence["a"] * d + confidence["b"] + shift)
    if confidence["kind"] == "isotonic":
        raw = np.interp(d, confidence["x"], confidence["y"])
        return np.clip(_sigmoid(_logit(raw) + shift), _EPS, 1 - _EPS)
    raise ValueError(f"unknown confidence kind {confidence['kind']!r}")


def threshold_at_fmr(operating_points, target):
    """Largest calibrated distance whose dev FMR is at most `target` (None if none qualifies)."""
    distance = np.asarray(operating_points["distance"], dtype=np.float64)
    fmr = np.asarray(operating_points["fmr"], dtype=np.float64)
    ok = np.flatnonzero(fmr <= target)
    return float(distance[ok[-1]]) if len(ok) else None


def fmr_at_threshold(operating_points, threshold):
    """Dev FMR at a threshold (the step curve's value at the largest point <= threshold)."""
    distance = np.asarray(operating_points["distance"], dtype=np.float64)
    i = np.searchsorted(distance, threshold, side="right") - 1
    return 0.0 if i < 0 else float(operating_points["fmr"][i])
