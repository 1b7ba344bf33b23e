"""Identity-level bootstrap: multiplicities, reproducibility, coverage, skipped resamples."""

from itertools import combinations

import numpy as np
import pytest

from calibration import metrics
from calibration.bootstrap import bootstrap_ci, pair_multiplicity


def identity_pairs(seed=0, n_ids=30, per_id=4):
    """All pairs of `per_id` images for each of `n_ids` identities; identity-level score offsets."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(n_ids), per_id)
    offset = rng.normal(0, 0.3, n_ids)
    rows = [(owner[x], owner[y]) for x, y in combinations(range(owner.size), 2)]
    id_a, id_b = np.array(rows).T
    label = (id_a == id_b).astype(int)
    distance = np.where(label == 1, 1.0, 2.5) + offset[id_a] + offset[id_b] + rng.normal(0, 0.5, label.size)
    return distance, label, id_a, id_b


def eer_value(genuine, impostor):
    return metrics.eer(genuine, impostor).value


def test_pair_multiplicity_counts_clones():
    counts = np.array([2, 0, 3])
    a, b = np.array([0, 0, 2, 1]), np.array([0, 2, 2, 2])
    # same identity: once per draw; different identities: product of draws
    assert pair_multiplicity(counts, a, b).tolist() == [2, 6, 3, 0]


def test_reproducible_with_seed_and_covers_estimate():
    data = identity_pairs()
    first = bootstrap_ci(*data, eer_value, n_resamples=100, seed=7)
    assert first == bootstrap_ci(*data, eer_value, n_resamples=100, seed=7)
    assert first != bootstrap_ci(*data, eer_value, n_resamples=100, seed=8)
    assert first.low <= first.estimate <= first.high
    distance, label = data[:2]
    assert first.estimate == eer_value(distance[label == 1], distance[label == 0])
    assert (first.n_resamples, first.n_skipped, first.level) == (100, 0, 0.95)
    assert first.high - first.low > 0


def test_string_ids_and_rate_statistics_work():
    distance, label, id_a, id_b = identity_pairs(n_ids=12)
    names = np.array([f"person-{k}" for k in range(12)])

    def fnmr_at_10_percent(genuine, impostor):
        return float(metrics.fnmr_at_fmr(genuine, impostor, 0.1))

    result = bootstrap_ci(distance, label, names[id_a], names[id_b], fnmr_at_10_percent, n_resamples=50)
    assert 0 <= result.low <= result.estimate <= result.high <= 1


def test_resamples_without_both_classes_are_skipped_and_counted():
    # identity 0 has the only genuine pairs; a resample drawing only identity 1 has none
    distance = np.array([0.1, 0.2, 0.9, 1.0])
    label = np.array([1, 1, 0, 0])
    result = bootstrap_ci(distance, label, [0, 0, 0, 0], [0, 0, 1, 1], eer_value, n_resamples=200, seed=0)
    assert result.n_skipped > 0 and result.n_resamples + result.n_skipped == 200


def test_refuses_degenerate_inputs():
    with pytest.raises(ValueError, match="one identity only"):
        bootstrap_ci([0.1, 0.9], [1, 0], ["a", "a"], ["a", "a"], eer_value)
    with pytest.raises(ValueError, match="no genuine"):
        bootstrap_ci([0.1, 0.9], [0, 0], [0, 1], [1, 2], eer_value)
    with pytest.raises(ValueError, match="one entry per comparison"):
        bootstrap_ci([0.1, 0.9], [1, 0], [0], [1], eer_value)
