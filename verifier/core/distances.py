"""Distances between embeddings: smaller means more alike, for every metric."""

import numpy as np


def pair_distances(a, b, metric):
    """Row-wise distance between two (N, D) arrays of embeddings."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric == "euclidean":
        return np.sqrt(np.maximum(((a - b) ** 2).sum(axis=1), 0.0))
    if metric == "cosine":
        return 1.0 - (_unit(a) * _unit(b)).sum(axis=1)
    raise ValueError(f"unknown metric {metric!r}")


def cross_distances(a, b, metric):
    """(N, M) matrix of distances from every row of `a` to every row of `b`."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric == "euclidean":
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(squared, 0.0))
    if metric == "cosine":
        return 1.0 - _unit(a) @ _unit(b).T
    raise ValueError(f"unknown metric {metric!r}")


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
