"""Identity-level bootstrap: confidence intervals that respect that pairs sharing an identity
are not independent (resampling comparisons alone would give intervals that are too narrow).

Each resample draws the identities with replacement and treats every draw as a distinct
clone identity. Multiplicity of a comparison between identities a and b with draw counts
c_a and c_b: c_a * c_b when a != b (every clone of a against every clone of b), and c_a when
a == b (each clone brings its own genuine pairs, or skilled forgeries, once; clones of one
identity are not compared with each other, since such pairs are neither genuine nor impostor
comparisons in the data).
"""

from typing import NamedTuple

import numpy as np

from calibration.metrics import check_labelled


class Interval(NamedTuple):
    """Point estimate on all data, percentile interval, and how many resamples went into it."""

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int  # resamples used
    n_skipped: int  # resamples drawn but skipped: no genuine or no impostor comparison left


def pair_multiplicity(counts, a, b):
    """How many times each comparison (a[k], b[k]) appears given identity draw `counts`."""
    return np.where(a == b, counts[a], counts[a] * counts[b])


def bootstrap_ci(distance, label, id_a, id_b, statistic, n_resamples=1000, seed=0, level=0.95):
    """Percentile interval of `statistic(genuine, impostor) -> float` over identity resamples.

    Reproducible: the draws come from `numpy.random.default_rng(seed)`.
    """
    d, y = check_labelled(distance, label)
    id_a, id_b = np.asarray(id_a), np.asarray(id_b)
    if id_a.shape != d.shape or id_b.shape != d.shape:
        raise ValueError(f"id_a and id_b must be 1-D with one entry per comparison ({d.size})")
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError("need 0 < level < 1 and n_resamples >= 1")
    ids, inverse = np.unique(np.concatenate([id_a, id_b]), return_inverse=True)
    if ids.size < 2:
        raise ValueError("one identity only: an identity bootstrap needs at least two identities")
    a, b = inverse[: d.size], inverse[d.size :]
    genuine, impostor = d[y], d[~y]

    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(n_resamples):
        counts = np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size)
        weight = pair_multiplicity(counts, a, b)
        g_weight, i_weight = weight[y], weight[~y]
        if not g_weight.any() or not i_weight.any():
            skipped += 1
            continue
        values.append(float(statistic(np.repeat(genuine, g_weight), np.repeat(impostor, i_weight))))
    if not values:
        raise ValueError(f"all {n_resamples} resamples lacked genuine or impostor comparisons")
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(statistic(genuine, impostor)), float(low), float(high), level, len(values), skipped)
