"""Confidence: map a distance to a calibrated P(same identity), and judge such a map.

Both calibrators learn a log-likelihood ratio llr(d) = log p(d|genuine) / p(d|impostor)
(the fit set's log-odds minus logit(train_prior)) and report
P(same) = sigmoid(llr(d) + logit(prior)), so the prior the probability assumes is explicit.
`to_dict()` holds plain numbers only; `calibrator_from_dict` rebuilds without scikit-learn.
"""

from typing import NamedTuple

import numpy as np
from scipy.special import expit, logit

from calibration.metrics import check_labelled
from verifier.core.decisions import probability_same

ISOTONIC_EPS = 1e-6


def _check_prior(prior):
    prior = float(prior)
    if not 0 < prior < 1:
        raise ValueError(f"prior must lie strictly between 0 and 1, got {prior}")
    return prior


class _Calibrator:
    """Shared prior handling: subclasses provide `_fit`, `_log_odds` (under the training prior),
    and `_params` / `_set_params` (their learned numbers as `to_dict` writes them).

    scikit-learn's conventions: the constructor only stores `prior`, `fit` checks it, and
    what fitting learns ends in an underscore (`train_prior_` here, the map's own in subclasses).
    """

    kind = None

    def __init__(self, prior=0.5):
        self.prior = prior

    def fit(self, distances, labels):
        """Learn the map from labelled distances (1 genuine, 0 impostor); returns self."""
        _check_prior(self.prior)
        d, y = check_labelled(distances, labels)
        self._fit(d, y)
        self.train_prior_ = float(y.mean())
        return self

    def _check_fitted(self):
        if not hasattr(self, "train_prior_"):
            raise ValueError(f"{type(self).__name__} is not fitted: call fit first")

    def llr(self, distances):
        """Log-likelihood ratio (genuine over impostor) of each distance; prior-free."""
        self._check_fitted()
        return self._log_odds(np.asarray(distances, dtype=float)) - logit(self.train_prior_)

    def predict(self, distances):
        """P(same identity) of each distance under `self.prior`: the service's own evaluation."""
        return probability_same(distances, self.to_dict())

    def to_dict(self):
        """JSON-serialisable parameters, enough for `calibrator_from_dict`."""
        self._check_fitted()
        return {"kind": self.kind, "prior": _check_prior(self.prior), "train_prior": self.train_prior_,
                **self._params()}

    @classmethod
    def from_dict(cls, data):
        """The fitted calibrator that `to_dict` describes (no refitting, no scikit-learn)."""
        self = cls(_check_prior(data["prior"]))
        self._set_params(data)
        self.train_prior_ = float(data["train_prior"])
        return self


class LogisticCalibrator(_Calibrator):
    """Platt scaling: log-odds = a*d + b, fitted by maximum likelihood (Newton's method)."""

    kind = "logistic"
    RIDGE = 1e-6  # on the standardised slope: negligible, but keeps the fit finite if classes separate

    def _fit(self, d, y):
        if np.ptp(d) == 0:
            raise ValueError("all distances are equal: nothing to fit a slope to")
        mu, sd = d.mean(), d.std()
        w = _newton_logistic(np.column_stack([np.ones_like(d), (d - mu) / sd]), y.astype(float), self.RIDGE)
        self.a_, self.b_ = float(w[1] / sd), float(w[0] - w[1] * mu / sd)

    def _log_odds(self, d):
        return self.a_ * d + self.b_

    def _params(self):
        return {"a": self.a_, "b": self.b_}

    def _set_params(self, data):
        self.a_, self.b_ = float(data["a"]), float(data["b"])


def _newton_logistic(x, y, ridge, tol=1e-12, max_iter=200):
    """Weights minimising the logistic loss (+ ridge/2 * slope^2), Newton with backtracking."""
    penalty = np.array([0.0, ridge])

    def loss(w):
        eta = x @ w
        return np.sum(np.logaddexp(0, eta) - y * eta) + 0.5 * penalty @ w**2

    w = np.array([logit(np.clip(y.mean(), 1e-12, 1 - 1e-12)), 0.0])
    for _ in range(max_iter):
        p = expit(x @ w)
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = -np.linalg.solve(hess, grad)
        decrement = -grad @ step
        if decrement / 2 <= tol * len(y):
            return w
        t, f0 = 1.0, loss(w)
        while loss(w + t * step) > f0 - 1e-4 * t * decrement and t > 1e-10:
            t /= 2
        w = w + t * step
    raise ValueError("logistic calibration did not converge")


class IsotonicCalibrator(_Calibrator):
    """Isotonic regression of the label on the distance (non-increasing), linear between knots.

    Fitted probabilities are clipped to [ISOTONIC_EPS, 1 - ISOTONIC_EPS] so the llr is finite.
    """

    kind = "isotonic"

    def _fit(self, d, y):
        from sklearn.isotonic import IsotonicRegression  # fitting only: serving never imports sklearn

        iso = IsotonicRegression(increasing=False, out_of_bounds="clip").fit(d, y.astype(float))
        self.x_, self.y_ = iso.X_thresholds_.astype(float), iso.y_thresholds_.astype(float)

    def _log_odds(self, d):
        return logit(np.clip(np.interp(d, self.x_, self.y_), ISOTONIC_EPS, 1 - ISOTONIC_EPS))

    def _params(self):
        return {"x": self.x_.tolist(), "y": self.y_.tolist()}

    def _set_params(self, data):
        self.x_, self.y_ = np.asarray(data["x"], dtype=float), np.asarray(data["y"], dtype=float)


CALIBRATORS = {cls.kind: cls for cls in (LogisticCalibrator, IsotonicCalibrator)}
DEFAULT_CONFIDENCE = "logistic"


def calibrator_from_dict(data):
    """Rebuild a fitted calibrator from its `to_dict()` form."""
    try:
        cls = CALIBRATORS[data["kind"]]
    except KeyError:
        kind = data.get("kind")
        raise ValueError(f"unknown calibrator kind {kind!r}; expected one of {sorted(CALIBRATORS)}") from None
    return cls.from_dict(data)


class Reliability(NamedTuple):
    """Per probability bin: edges (bins + 1), count, mean predicted, observed genuine frequency."""

    edges: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray  # NaN in empty bins
    observed: np.ndarray  # NaN in empty bins


def _check_probs(probs, labels):
    p, y = check_labelled(probs, labels, name="probabilities")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    return p, y


def reliability_table(probs, labels, bins=10):
    """Equal-width bins over [0, 1] (the last one closed): how often predictions come true."""
    p, y = _check_probs(probs, labels)
    index = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=p, minlength=bins) / count
        observed = np.bincount(index, weights=y, minlength=bins) / count
    return Reliability(np.linspace(0, 1, bins + 1), count, mean_predicted, observed)


def ece(probs, labels, bins=10):
    """Expected calibration error: count-weighted mean |mean predicted - observed| over bins."""
    table = reliability_table(probs, labels, bins)
    filled = table.count > 0
    gap = np.abs(table.mean_predicted[filled] - table.observed[filled])
    return float(np.sum(table.count[filled] * gap) / table.count.sum())


def cllr(probs, labels, prior=0.5):
    """Brümmer's Cllr in bits of the llrs logit(p) - logit(prior): 0 perfect, 1 uninformative."""
    p, y = _check_probs(probs, labels)
    llr = logit(p) - logit(_check_prior(prior))
    genuine_cost = np.mean(np.logaddexp(0, -llr[y]))
    impostor_cost = np.mean(np.logaddexp(0, llr[~y]))
    return float((genuine_cost + impostor_cost) / (2 * np.log(2)))
