"""Score-level verification metrics over genuine and impostor *distances* (ISO/IEC 19795-1).

A comparison is accepted when its distance is <= the threshold, so
FMR(t) = #{impostor <= t} / #impostor and FNMR(t) = #{genuine > t} / #genuine.
Every rate travels with its counts (`Rate`), in the style of bob.measure.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.stats import norm

from verifier.core.decisions import rate_supported_by

EER_METHOD = "linear interpolation between the two operating points where FMR - FNMR changes sign"


@dataclass(frozen=True)
class Rate:
    """An error rate with the counts behind it: `errors` out of `total` comparisons."""

    errors: int
    total: int

    def __post_init__(self):
        if self.total <= 0 or not 0 <= self.errors <= self.total:
            raise ValueError(f"a rate needs 0 <= errors <= total, total > 0; got {self.errors}/{self.total}")

    @property
    def value(self):
        return self.errors / self.total

    def __float__(self):
        return self.value

    def __str__(self):
        pct = 100 * self.value
        text = f"{pct:.1f}" if pct >= 0.1 or pct == 0 else f"{pct:.2g}"
        return f"{text}% ({self.errors}/{self.total})"

    def to_dict(self):
        return {"errors": self.errors, "total": self.total, "value": self.value}


class OperatingPoint(NamedTuple):
    """What one threshold does: its FMR and FNMR, each with counts."""

    threshold: float
    fmr: Rate
    fnmr: Rate


class Roc(NamedTuple):
    """The exact step curve: one row per distinct threshold, ascending, led by -inf (accept none)."""

    thresholds: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray
    false_matches: np.ndarray
    false_non_matches: np.ndarray
    n_genuine: int
    n_impostor: int

    def point(self, index):
        """The operating point of row `index`, with counts."""
        return OperatingPoint(
            float(self.thresholds[index]),
            Rate(int(self.false_matches[index]), self.n_impostor),
            Rate(int(self.false_non_matches[index]), self.n_genuine),
        )


class Eer(NamedTuple):
    """Equal error rate, the threshold of the nearer bracketing operating point, and how."""

    value: float
    threshold: float
    method: str
    bracket: tuple  # (OperatingPoint just before the crossing, OperatingPoint at/after it)


class Det(NamedTuple):
    """DET curve: probit (normal deviate) of FMR and FNMR per threshold."""

    thresholds: np.ndarray
    fmr_probit: np.ndarray
    fnmr_probit: np.ndarray


@dataclass(frozen=True)
class RateSupport:
    """Whether `have` comparisons can support a target rate; false in a boolean context if not."""

    supported: bool
    needed: int
    have: int

    def __bool__(self):
        return self.supported


def check_scores(genuine, impostor):
    """Return both inputs as 1-D float arrays; ValueError if either is empty or not finite."""
    return _check_one("genuine", genuine), _check_one("impostor", impostor)


def _check_one(name, scores):
    arr = np.asarray(scores, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} distances must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"no {name} comparisons: need at least one {name} distance")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} distances contain {int(bad.sum())} NaN/inf value(s), first at index {first}")
    return arr


def check_labelled(values, labels, name="distances"):
    """Validate per-comparison `values` and `labels` (1 genuine, 0 impostor): 1-D, same
    length, finite, binary, both classes present. Returns (float array, bool array)."""
    values = np.asarray(values, dtype=float)
    labels = np.asarray(labels)
    if values.ndim != 1 or labels.shape != values.shape:
        raise ValueError(
            f"{name} and labels must be 1-D arrays of one length, got shapes {values.shape} and {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 1 (genuine) or 0 (impostor)")
    labels = labels.astype(bool)
    _check_one("genuine", values[labels])
    _check_one("impostor", values[~labels])
    return values, labels


def _check_target(target):
    target = float(target)
    if not 0 <= target <= 1:
        raise ValueError(f"a target rate must lie in [0, 1], got {target}")
    return target


def fmr_fnmr(genuine, impostor, threshold):
    """FMR and FNMR (with counts) when accepting every distance <= `threshold`."""
    g, i = check_scores(genuine, impostor)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    return OperatingPoint(
        threshold, Rate(int(np.sum(i <= threshold)), i.size), Rate(int(np.sum(g > threshold)), g.size)
    )


def roc(genuine, impostor):
    """Every distinct operating point: thresholds -inf then each distinct distance, ascending.

    Tied distances share one threshold, so each row is a rate some real threshold achieves.
    """
    g, i = check_scores(genuine, impostor)
    g, i = np.sort(g), np.sort(i)
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([g, i]))])
    fm = np.searchsorted(i, thresholds, side="right")
    fnm = g.size - np.searchsorted(g, thresholds, side="right")
    return Roc(thresholds, fm / i.size, fnm / g.size, fm, fnm, g.size, i.size)


def eer(genuine, impostor):
    """Equal error rate, computed exactly on the step curves.

    Find the first operating point where FMR >= FNMR; the point before it has FMR < FNMR.
    The EER is where the straight segment between these two (FMR, FNMR) points meets
    FMR = FNMR (`EER_METHOD`). The threshold returned is that of whichever of the two points
    has the smaller |FMR - FNMR| (the later one on a tie), so it is a threshold that exists.
    """
    curve = roc(genuine, impostor)
    diff = curve.fmr - curve.fnmr  # -1 at the leading -inf row, +1 at the last row
    hi = int(np.argmax(diff >= 0))
    lo = hi - 1
    alpha = -diff[lo] / (diff[hi] - diff[lo])
    value = curve.fmr[lo] + alpha * (curve.fmr[hi] - curve.fmr[lo])
    nearer = hi if abs(diff[hi]) <= abs(diff[lo]) else lo
    return Eer(float(value), float(curve.thresholds[nearer]), EER_METHOD, (curve.point(lo), curve.point(hi)))


def auc(genuine, impostor):
    """P(random genuine distance < random impostor distance), ties counting 1/2."""
    g, i = check_scores(genuine, impostor)
    g = np.sort(g)
    below = np.searchsorted(g, i, side="left")
    tied = np.searchsorted(g, i, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (g.size * i.size))


def threshold_at_fmr(genuine, impostor, target):
    """The largest threshold (-inf or an observed distance) whose FMR <= `target`: the loosest."""
    target = _check_target(target)
    curve = roc(genuine, impostor)
    return float(curve.thresholds[np.flatnonzero(curve.fmr <= target)[-1]])


def threshold_at_fnmr(genuine, impostor, target):
    """The smallest observed distance whose FNMR <= `target`: the strictest threshold meeting it."""
    target = _check_target(target)
    curve = roc(genuine, impostor)
    return float(curve.thresholds[np.flatnonzero(curve.fnmr <= target)[0]])


def fnmr_at_fmr(genuine, impostor, target):
    """FNMR (with counts) at the loosest threshold whose FMR <= `target`."""
    return fmr_fnmr(genuine, impostor, threshold_at_fmr(genuine, impostor, target)).fnmr


def det(genuine, impostor):
    """DET points: norm.ppf of FMR and FNMR on the `roc` thresholds.

    Rates are clipped to half a comparison from 0 and 1 (0.5/n) so that the ends stay finite.
    """
    curve = roc(genuine, impostor)
    fm_floor, fnm_floor = 0.5 / curve.n_impostor, 0.5 / curve.n_genuine
    return Det(
        curve.thresholds,
        norm.ppf(np.clip(curve.fmr, fm_floor, 1 - fm_floor)),
        norm.ppf(np.clip(curve.fnmr, fnm_floor, 1 - fnm_floor)),
    )


def supports_rate(n, target):
    """Rule of three: 0 errors in n comparisons only bounds the rate near 3/n (95 %).

    A target rate t is supported only when n >= 3/t; `needed` is that count.
    """
    target = float(target)
    if not 0 < target < 1:
        raise ValueError(f"a target rate must lie in (0, 1), got {target}")
    needed = rate_supported_by(target)
    return RateSupport(int(n) >= needed, needed, int(n))
