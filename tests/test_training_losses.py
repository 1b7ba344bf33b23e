"""Each training loss against a plain numpy reference: values and gradients (float64),
each loss fed by the miner and reducer the trainer gives it; the reducers; the mining
settings TrainConfig accepts."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from training import losses, miners, reducers
from training.trainer import (
    ConfigError,
    TrainConfig,
    TrainingError,
    build_loss,
    build_miner,
)

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
    return float(value), tf.convert_to_tensor(tape.gradient(value, var)).numpy()  # gathers give IndexedSlices


def contrastive(a, b, y, margin):
    """The trainer's contrastive loss on pairs (a_i, b_i), laid out as a PairSampler batch."""
    batch = tf.concat([a, b], axis=0)
    return losses.ContrastiveLoss(margin)(batch, y, miners.SampledPairs()(batch, y))


def objective(**settings):
    """(embeddings, labels) -> loss, with the miner, loss and reducer the trainer builds for `settings`."""
    config = TrainConfig(**settings)
    miner, loss = build_miner(config), build_loss(config, [])
    return lambda x, labels: loss(x, labels, miner(x, labels))


def check(tf_loss, np_loss, x):
    value, grad = tf_value_and_grad(tf_loss, x)
    assert value == pytest.approx(np_loss(x), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(grad, numeric_grad(np_loss, x), rtol=1e-4, atol=1e-6)
    return value


@pytest.mark.parametrize("margin", [0.5, 1.5])
def test_contrastive_value_and_gradient(margin):
    a, b = embeddings(6, seed=1), embeddings(6, seed=2)
    y = np.array([1, 0, 1, 0, 0, 1], dtype=np.float64)  # 1 = similar (genuine pair)
    check(lambda v: contrastive(v, tf.constant(b), tf.constant(y), margin),
          lambda v: ref_contrastive(v, b, y, margin), a)


def test_contrastive_pulls_similar_and_pushes_dissimilar():
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    similar = float(contrastive(a, b, np.array([1.0]), 1.0))
    dissimilar = float(contrastive(a, b, np.array([0.0]), 1.0))
    assert similar == pytest.approx(0.5 * 2.0)  # d^2 / 2 with d = sqrt(2)
    assert dissimilar == 0.0  # already farther than the margin


@pytest.mark.parametrize("mining,reference", [
    ("batch-all", ref_batch_all), ("batch-hard", ref_batch_hard), ("semi-hard", ref_semi_hard)])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_mining_value_and_gradient(mining, reference, margin):
    x = embeddings(seed=3)
    loss = objective(loss="triplet", mining=mining, margin=margin)
    value = check(lambda v: loss(v, tf.constant(LABELS)),
                  lambda v: reference(v, LABELS, margin), x)
    assert value > 0


def test_soft_margin_is_softplus_of_the_hard_difference():
    x = embeddings(seed=4)
    d = np_dist(x)
    expected = np.mean([np.log1p(np.exp(max(d[a, p] for p in range(8) if p != a and LABELS[p] == LABELS[a])
                                        - min(d[a, n] for n in range(8) if LABELS[n] != LABELS[a])))
                        for a in range(8)])
    loss = objective(loss="triplet", mining="batch-hard", soft_margin=True)
    assert float(loss(x, LABELS)) == pytest.approx(expected, rel=1e-6)


def test_triplet_losses_vanish_for_well_separated_clusters():
    centres = np.eye(3)
    x = centres[LABELS] + 0.01 * embeddings(dim=3, seed=5)
    for mining in ("batch-all", "batch-hard", "semi-hard"):
        assert float(objective(loss="triplet", mining=mining, margin=0.2)(x, LABELS)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_npair_value_and_gradient(k):
    p = 3
    x = embeddings(p * k, seed=6)
    labels = tf.constant(np.repeat(np.arange(p), k))
    check(lambda v: objective(loss="npair", batch_k=k, temperature=0.2)(v, labels),
          lambda v: ref_npair(v, p, k, 0.2), x)


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
    check(lambda v: losses.CosFaceLoss(tf.constant(proxies), scale, margin)(v, tf.constant(LABELS)),
          lambda v: ref_cosface(v, LABELS, proxies, scale, margin), x)
    check(lambda w: losses.CosFaceLoss(w, scale, margin)(tf.constant(x), tf.constant(LABELS)),
          lambda w: ref_cosface(x, LABELS, w, scale, margin), proxies)


def test_cosface_margin_makes_a_correct_classification_cost_more():
    proxies = np.eye(3)
    x = np.eye(3)[LABELS]  # every embedding on its own identity's proxy
    free = float(losses.CosFaceLoss(proxies, 16.0, 0.0)(x, LABELS))
    assert float(losses.CosFaceLoss(proxies, 16.0, 0.3)(x, LABELS)) > free > 0


def test_triplet_loss_scores_exactly_the_triplets_it_is_given():
    x = embeddings(seed=9)
    d = np_dist(x)
    triplets = (np.array([0, 3, 5]), np.array([1, 4, 7]), np.array([6, 0, 2]))
    value = float(losses.TripletMarginLoss(0.3, reducer=reducers.mean)(x, LABELS, triplets))
    assert value == pytest.approx(np.mean([max(d[a, p] - d[a, n] + 0.3, 0.0) for a, p, n in zip(*triplets)]), rel=1e-9)


def test_mean_reducer_averages_every_tuple_and_gives_zero_when_none_was_mined():
    assert float(reducers.mean(tf.constant([0.0, 1.0, 2.0, 5.0]))) == pytest.approx(2.0)
    assert float(reducers.mean(tf.zeros([0]))) == 0.0


def test_mean_over_nonzero_reducer_leaves_the_satisfied_tuples_out():
    assert float(reducers.mean_over_nonzero(tf.constant([0.0, 1.0, 0.0, 5.0]))) == pytest.approx(3.0)
    assert float(reducers.mean_over_nonzero(tf.zeros([4]))) == 0.0
    assert float(reducers.mean_over_nonzero(tf.zeros([0]))) == 0.0


@pytest.mark.parametrize("loss", ["contrastive", "npair", "cosface"])
def test_a_mining_for_a_loss_that_mines_nothing_is_an_error_not_dropped(loss):
    with pytest.raises(ValueError, match="applies to the triplet loss only"):
        TrainConfig(loss=loss, mining="semi-hard")
    assert issubclass(ConfigError, TrainingError)  # the CLI prints it as one line, no traceback
    assert TrainConfig(loss=loss).mining is None


def test_triplet_mining_defaults_to_batch_all_and_an_unknown_one_is_refused():
    assert TrainConfig(loss="triplet").mining == "batch-all"
    assert TrainConfig(loss="triplet", mining="semi-hard").mining == "semi-hard"
    with pytest.raises(ValueError, match="unknown mining 'hardest'"):
        TrainConfig(loss="triplet", mining="hardest")
