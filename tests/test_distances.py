"""One formula per metric: numpy (serving, calibration) and TensorFlow (training) agree, and the
numpy results are bit for bit those calibrated thresholds were fitted on."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from training.losses import EMBEDDING_DISTANCE, TENSOR_OPS
from verifier.core.distances import METRICS, cross_distances, get_metric, pair_distances


def rows(n, dim=8, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(dtype)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def frozen_pair(a, b, metric):
    """pair_distances as it was written before the formulas were shared."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if metric == "euclidean":
        return np.sqrt(np.maximum(((a - b) ** 2).sum(axis=1), 0.0))
    return 1.0 - (unit(a) * unit(b)).sum(axis=1)


def frozen_cross(a, b, metric):
    """cross_distances as it was written before the formulas were shared."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if metric == "euclidean":
        return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0))
    return 1.0 - unit(a) @ unit(b).T


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_distances_are_bit_for_bit_the_calibrated_ones(metric, dtype):
    for n, m, dim, seed in [(1, 1, 4, 0), (7, 5, 64, 1), (40, 33, 128, 2)]:
        a, b = rows(n, dim, seed, dtype), rows(m, dim, seed + 10, dtype)
        np.testing.assert_array_equal(cross_distances(a, b, metric), frozen_cross(a, b, metric))
        np.testing.assert_array_equal(pair_distances(a, b[:1].repeat(n, 0), metric),
                                      frozen_pair(a, b[:1].repeat(n, 0), metric))
    np.testing.assert_array_equal(pair_distances(a, a, metric), frozen_pair(a, a, metric))


@pytest.mark.parametrize("metric", list(METRICS))
def test_numpy_and_tensorflow_run_the_same_formulas(metric):
    a, b = rows(12, seed=3), rows(12, seed=4)
    on_numpy, on_tensors = get_metric(metric), get_metric(metric, TENSOR_OPS)
    for x, y in [(a, b), (a, a)]:
        np.testing.assert_allclose(on_tensors.pair(tf.constant(x), tf.constant(y)).numpy(), on_numpy.pair(x, y),
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(on_tensors.cross(tf.constant(x), tf.constant(y)).numpy(),
                                   on_numpy.cross(x, y), rtol=0, atol=1e-6)
    np.testing.assert_allclose(on_tensors.cross(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy(),
                               on_numpy.cross(a, b), rtol=0, atol=1e-5)  # float32 in training


def test_the_training_distance_is_the_euclidean_one_with_finite_gradients_at_zero():
    x = unit(rows(6, seed=5))
    off_diagonal = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(EMBEDDING_DISTANCE.cross(tf.constant(x), tf.constant(x)).numpy()[off_diagonal],
                               cross_distances(x, x, "euclidean")[off_diagonal], rtol=0, atol=1e-6)
    same = tf.Variable(x[:2])
    with tf.GradientTape(persistent=True) as tape:
        total_pair = tf.reduce_sum(EMBEDDING_DISTANCE.pair(same, same))
        total_cross = tf.reduce_sum(EMBEDDING_DISTANCE.cross(same, same))  # its diagonal is zero
    for total in (total_pair, total_cross):
        assert np.isfinite(tape.gradient(total, same).numpy()).all()


@pytest.mark.parametrize("metric", list(METRICS))
def test_prepared_rows_and_inner_products_give_the_cross_distances(metric):
    """The gallery's coarse search: keys prepared once, then one inner product per probe."""
    distance = get_metric(metric)
    keys, probe = distance.prepare(rows(9, seed=6)), distance.prepare(rows(1, seed=7))[0]
    coarse = distance.from_inner(keys @ probe, (keys * keys).sum(axis=1), float(probe @ probe))
    np.testing.assert_allclose(coarse, cross_distances(rows(9, seed=6), rows(1, seed=7), metric)[:, 0], atol=1e-12)


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        pair_distances(rows(2), rows(2), "manhattan")


def test_the_distance_module_runs_without_tensorflow():
    code = "import sys, verifier.core.distances; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
