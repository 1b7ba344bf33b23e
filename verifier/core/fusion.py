"""Fuse a probe's distances to a subject's several templates into one score.

The rule is part of the calibration: calibration.json's "fusion" section is fitted on
fused scores made by exactly this function, so a subject verify's threshold and
confidence mean what a pair verify's do.
"""

import numpy as np

from verifier.core.distances import cross_distances

RULES = ("mean", "min", "centroid")
DEFAULT_RULE = "mean"


def fused_distances(probes, templates, metric, rule=DEFAULT_RULE):
    """Probes (N, D) against one subject's templates (K, D) -> (N,) fused distances."""
    templates = np.asarray(templates, dtype=np.float64)
    if len(templates) == 0:
        raise ValueError("a subject with no templates cannot be compared")
    if rule == "centroid":
        centroid = templates.mean(axis=0, keepdims=True)
        return cross_distances(probes, centroid, metric)[:, 0]
    matrix = cross_distances(probes, templates, metric)
    if rule == "mean":
        return matrix.mean(axis=1)
    if rule == "min":
        return matrix.min(axis=1)
    raise ValueError(f"unknown fusion rule {rule!r}; known: {', '.join(RULES)}")
