"""Distances between embeddings: smaller means more alike, for every metric.

Each metric's formulas are written once, against an array namespace `xp` that offers
`sum`, `sqrt`, `maximum`, `square` and `inner` (all-rows inner products, `a @ b.T`).
numpy is the default; training passes a TensorFlow one (`training.losses.TENSOR_OPS`),
so the losses differentiate the very formulas that serving and calibration use.
"""

import numpy as np

NORM_FLOOR = 1e-12  # smallest norm a vector is divided by when made a unit vector


class Euclidean:
    """Straight-line distance. `floor` bounds the squared distance from below: 0 for
    scoring, a little above 0 in training so the square root's gradient stays finite."""

    name = "euclidean"

    def __init__(self, xp=np, floor=0.0):
        self.xp = xp
        self.floor = floor

    def prepare(self, x):
        """Rows as the metric compares them: as they are."""
        return x

    def pair(self, a, b):
        """Row-wise distances between two (N, D) arrays."""
        xp = self.xp
        return xp.sqrt(xp.maximum(xp.sum(xp.square(a - b), axis=1), self.floor))

    def cross(self, a, b):
        """(N, M) distances from every row of `a` to every row of `b`."""
        xp = self.xp
        squared_a, squared_b = xp.sum(xp.square(a), axis=1), xp.sum(xp.square(b), axis=1)
        return self.from_inner(xp.inner(a, b), squared_a[:, None], squared_b[None, :])

    def from_inner(self, inner, squared_a, squared_b):
        """Distances from prepared rows' inner products and squared norms (broadcast together)."""
        xp = self.xp
        return xp.sqrt(xp.maximum(squared_a + squared_b - 2.0 * inner, self.floor))


class Cosine:
    """One minus the cosine of the angle between two embeddings (0 to 2)."""

    name = "cosine"

    def __init__(self, xp=np):
        self.xp = xp

    def prepare(self, x):
        """Rows as the metric compares them: unit vectors."""
        xp = self.xp
        return x / xp.maximum(xp.sqrt(xp.sum(xp.square(x), axis=1, keepdims=True)), NORM_FLOOR)

    def pair(self, a, b):
        """Row-wise distances between two (N, D) arrays."""
        return 1.0 - self.xp.sum(self.prepare(a) * self.prepare(b), axis=1)

    def cross(self, a, b):
        """(N, M) distances from every row of `a` to every row of `b`."""
        return self.from_inner(self.xp.inner(self.prepare(a), self.prepare(b)))

    def from_inner(self, inner, squared_a=None, squared_b=None):
        """Distances from prepared (unit) rows' inner products; the norms are 1 and unused."""
        return 1.0 - inner


METRICS = {"euclidean": Euclidean, "cosine": Cosine}


def get_metric(name, xp=np):
    """The distance object for a metric's name, on namespace `xp`."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}")
    return METRICS[name](xp)


def pair_distances(a, b, metric):
    """Row-wise distance between two (N, D) arrays of embeddings, in float64."""
    return get_metric(metric).pair(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def cross_distances(a, b, metric):
    """(N, M) matrix of distances from every row of `a` to every row of `b`, in float64."""
    return get_metric(metric).cross(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
