"""Threshold policies: how a threshold is chosen on dev distances.

Specs: `eer`, `fmr=<target>`, `fnmr=<target>`, `cost=<c_fm>:<c_fnm>:<p_genuine>`.
`parse_policy(text).choose(genuine, impostor)` returns the threshold (accept distance <= it).
"""

import math
from dataclasses import dataclass

import numpy as np

from calibration import metrics


class PolicyError(ValueError):
    """A policy spec that is malformed or out of range, or a target the data cannot support."""


def _fmt(x):
    """Shortest text that parses back to exactly `x` ("0.001", "10", "1e-05")."""
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def _require_support(kind, target, n, what):
    support = metrics.supports_rate(n, target)
    if not support:
        raise PolicyError(
            f"{kind}={_fmt(target)} needs at least {support.needed} {what} comparisons; have {support.have}"
        )


@dataclass(frozen=True)
class EerPolicy:
    """The threshold at the equal error rate; when genuine and impostor distances do not
    overlap at all, the middle of the gap between them.

    With no overlap every threshold in the gap has FMR = FNMR = 0, and the EER's own
    threshold is the largest genuine distance: the edge of the gap, where the next genuine
    comparison a little further apart is rejected (a pretrained face tower on ORL: 0 dev
    errors, then 26% FNMR on eval subjects). The middle keeps the widest margin to both.
    """

    name = "eer"

    @property
    def spec(self):
        return "eer"

    def choose(self, genuine, impostor):
        g, i = metrics.check_scores(genuine, impostor)
        if g.max() < i.min():
            return float((g.max() + i.min()) / 2)
        return metrics.eer(g, i).threshold


@dataclass(frozen=True)
class FmrPolicy:
    """The loosest threshold whose FMR <= target (needs >= 3/target impostor comparisons)."""

    target: float
    name = "fmr"

    @property
    def spec(self):
        return f"fmr={_fmt(self.target)}"

    def choose(self, genuine, impostor):
        _, impostor = metrics.check_scores(genuine, impostor)
        _require_support("fmr", self.target, impostor.size, "impostor")
        return metrics.threshold_at_fmr(genuine, impostor, self.target)


@dataclass(frozen=True)
class FnmrPolicy:
    """The strictest threshold whose FNMR <= target (needs >= 3/target genuine comparisons)."""

    target: float
    name = "fnmr"

    @property
    def spec(self):
        return f"fnmr={_fmt(self.target)}"

    def choose(self, genuine, impostor):
        genuine, _ = metrics.check_scores(genuine, impostor)
        _require_support("fnmr", self.target, genuine.size, "genuine")
        return metrics.threshold_at_fnmr(genuine, impostor, self.target)


@dataclass(frozen=True)
class CostPolicy:
    """The threshold minimising c_fm*(1-p)*FMR + c_fnm*p*FNMR, p = P(genuine); the strictest on ties."""

    c_fm: float
    c_fnm: float
    p_genuine: float
    name = "cost"

    @property
    def spec(self):
        return f"cost={_fmt(self.c_fm)}:{_fmt(self.c_fnm)}:{_fmt(self.p_genuine)}"

    def expected_cost(self, fmr, fnmr):
        """Expected cost per comparison of an operating point (works on arrays)."""
        p = self.p_genuine
        return self.c_fm * (1 - p) * np.asarray(fmr) + self.c_fnm * p * np.asarray(fnmr)

    def choose(self, genuine, impostor):
        curve = metrics.roc(genuine, impostor)
        return float(curve.thresholds[np.argmin(self.expected_cost(curve.fmr, curve.fnmr))])


def _number(text, spec):
    try:
        value = float(text)
    except ValueError:
        raise PolicyError(f"policy {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PolicyError(f"policy {spec!r}: {text!r} is not a finite number")
    return value


def _fraction(text, spec, what):
    value = _number(text, spec)
    if not 0 < value < 1:
        raise PolicyError(f"policy {spec!r}: {what} must lie strictly between 0 and 1, got {_fmt(value)}")
    return value


def parse_policy(text):
    """Parse a policy spec; PolicyError (a ValueError) says what is wrong and what is expected."""
    spec = str(text).strip()
    name, sep, arg = (part.strip() for part in spec.partition("="))
    name = name.lower()
    if name == "eer" and not sep:
        return EerPolicy()
    if name in ("fmr", "fnmr") and arg:
        return (FmrPolicy if name == "fmr" else FnmrPolicy)(_fraction(arg, spec, "the target rate"))
    if name == "cost" and arg:
        parts = arg.split(":")
        if len(parts) != 3:
            raise PolicyError(f"policy {spec!r}: expected cost=<c_fm>:<c_fnm>:<p_genuine>")
        c_fm, c_fnm = (_number(p, spec) for p in parts[:2])
        if c_fm <= 0 or c_fnm <= 0:
            raise PolicyError(f"policy {spec!r}: costs must be positive")
        return CostPolicy(c_fm, c_fnm, _fraction(parts[2], spec, "p_genuine"))
    raise PolicyError(
        f"unknown or malformed policy {spec!r}: expected eer, fmr=<target>, fnmr=<target> "
        "or cost=<c_fm>:<c_fnm>:<p_genuine>"
    )
