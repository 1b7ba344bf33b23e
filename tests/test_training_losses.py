"""Each training loss against a plain numpy reference: values and gradients (float64)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from training import losses

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def embeddings(n=8, dim=4, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_dist(x):
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def ref_contrastive(a, b, y, margin):
    d = np.sqrt(((a - b) ** 2).sum(1))
    return 0.5 * np.mean(y * d ** 2 + (1 - y) * np.maximum(margin - d, 0) ** 2)


def ref_batch_all(x, labels, margin):
    d = np_dist(x)
    values = [d[a, p] - d[a, n] + margin
              for a, p, n in itertools.product(range(len(x)), repeat=3)
              if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
    positive = [v for v in values if v > 1e-16]
    return sum(positive) / max(len(positive), 1)


def ref_batch_hard(x, labels, margin):
    d = np_dist(x)
    out = []
    for a in range(len(x)):
        pos = [d[a, p] for p in range(len(x)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(x)) if labels[n] != labels[a]]
        out.append(max(max(pos) - min(neg) + margin, 0.0))
    return np.mean(out)


def ref_semi_hard(x, labels, margin):
    d = np_dist(x)
    out = []
    for a, p in itertools.permutations(range(len(x)), 2):
        if labels[a] != labels[p]:
            continue
        neg = [d[a, n] for n in range(len(x)) if labels[n] != labels[a]]
        farther = [v for v in neg if v > d[a, p]]
        chosen = min(farther) if farther else max(neg)
        out.append(max(d[a, p] - chosen + margin, 0.0))
    return np.mean(out)


def ref_npair(x, p, k, temperature):
    grid = x.reshape(p, k, -1)
    total = 0.0
    for m in range(k // 2):
        logits = grid[:, 2 * m] @ grid[:, 2 * m + 1].T / temperature
        logits -= logits.max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total += -np.mean(np.diag(log_softmax))
    return total / (k // 2)


def numeric_grad(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (f(up) - f(down)) / (2 * eps)
    return grad


def tf_value_and_grad(f, x):
    var = tf.Variable(x, dtype=tf.float64)
    with tf.GradientTape() as tape:
        value = f(var)
    return float(value), tape.gradient(value, var).numpy()


def check(tf_loss, np_loss, x):
    value, grad = tf_value_and_grad(tf_loss, x)
    assert value == pytest.approx(np_loss(x), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(grad, numeric_grad(np_loss, x), rtol=1e-4, atol=1e-6)
    return value


@pytest.mark.parametrize("margin", [0.5, 1.5])
def test_contrastive_value_and_gradient(margin):
    a, b = embeddings(6, seed=1), embeddings(6, seed=2)
    y = np.array([1, 0, 1, 0, 0, 1], dtype=np.float64)  # 1 = similar (genuine pair)
    check(lambda v: losses.contrastive_loss(v, tf.constant(b), tf.constant(y), margin),
          lambda v: ref_contrastive(v, b, y, margin), a)


def test_contrastive_pulls_similar_and_pushes_dissimilar():
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    similar = float(losses.contrastive_loss(a, b, np.array([1.0]), 1.0))
    dissimilar = float(losses.contrastive_loss(a, b, np.array([0.0]), 1.0))
    assert similar == pytest.approx(0.5 * 2.0)  # d^2 / 2 with d = sqrt(2)
    assert dissimilar == 0.0  # already farther than the margin


@pytest.mark.parametrize("mining,reference", [
    ("batch-all", ref_batch_all), ("batch-hard", ref_batch_hard), ("semi-hard", ref_semi_hard)])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_mining_value_and_gradient(mining, reference, margin):
    x = embeddings(seed=3)
    value = check(lambda v: losses.TRIPLET_MINING[mining](v, tf.constant(LABELS), margin),
                  lambda v: reference(v, LABELS, margin), x)
    assert value > 0


def test_soft_margin_is_softplus_of_the_hard_difference():
    x = embeddings(seed=4)
    d = np_dist(x)
    expected = np.mean([np.log1p(np.exp(max(d[a, p] for p in range(8) if p != a and LABELS[p] == LABELS[a])
                                        - min(d[a, n] for n in range(8) if LABELS[n] != LABELS[a])))
                        for a in range(8)])
    assert float(losses.triplet_batch_hard(x, LABELS, 0.2, soft=True)) == pytest.approx(expected, rel=1e-6)


def test_triplet_losses_vanish_for_well_separated_clusters():
    centres = np.eye(3)
    x = centres[LABELS] + 0.01 * embeddings(dim=3, seed=5)
    for mine in losses.TRIPLET_MINING.values():
        assert float(mine(x, LABELS, 0.2)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_npair_value_and_gradient(k):
    p = 3
    x = embeddings(p * k, seed=6)
    check(lambda v: losses.npair_loss(v, p, k, 0.2), lambda v: ref_npair(v, p, k, 0.2), x)


def ref_cosface(x, labels, proxies, scale, margin):
    cosines = x @ (proxies / np.linalg.norm(proxies, axis=0, keepdims=True))
    logits = scale * (cosines - margin * np.eye(proxies.shape[1])[labels])
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(log_softmax[np.arange(len(x)), labels])


@pytest.mark.parametrize("scale,margin", [(16.0, 0.3), (4.0, 0.0)])
def test_cosface_value_and_gradient_for_embeddings_and_proxies(scale, margin):
    x = embeddings(seed=7)
    proxies = np.random.default_rng(8).normal(size=(4, 3))
    check(lambda v: losses.cosface_loss(v, tf.constant(LABELS), tf.constant(proxies), scale, margin),
          lambda v: ref_cosface(v, LABELS, proxies, scale, margin), x)
    check(lambda w: losses.cosface_loss(tf.constant(x), tf.constant(LABELS), w, scale, margin),
          lambda w: ref_cosface(x, LABELS, w, scale, margin), proxies)


def test_cosface_margin_makes_a_correct_classification_cost_more():
    proxies = np.eye(3)
    x = np.eye(3)[LABELS]  # every embedding on its own identity's proxy
    free = float(losses.cosface_loss(x, LABELS, proxies, 16.0, 0.0))
    assert float(losses.cosface_loss(x, LABELS, proxies, 16.0, 0.3)) > free > 0
