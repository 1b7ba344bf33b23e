"""Each miner's index tuples on a tiny labelled batch, against brute force over every candidate."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from training import miners
from training.trainer import DEFAULT_MINING, MINING

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])  # identity 3 has no positive: never an anchor


def embeddings(n=9, dim=4, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_dist(x):
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def as_rows(tuples):
    return sorted(zip(*(np.asarray(t).tolist() for t in tuples)))


def test_the_cli_names_are_the_triplet_miners():
    assert MINING == ("batch-all", "batch-hard", "semi-hard") and DEFAULT_MINING == "batch-all"
    assert set(miners.TRIPLET_MINERS) == set(MINING)


def test_all_triplets_are_every_anchor_positive_negative():
    n = len(LABELS)
    expected = [(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
                if a != p and LABELS[a] == LABELS[p] and LABELS[q] != LABELS[a]]
    assert as_rows(miners.AllTriplets()(embeddings(), tf.constant(LABELS))) == expected


def test_hardest_triplets_take_each_anchors_farthest_positive_and_nearest_negative():
    x = embeddings(seed=1)
    d = np_dist(x)
    expected = []
    for a in range(len(x)):
        positives = [p for p in range(len(x)) if p != a and LABELS[p] == LABELS[a]]
        negatives = [q for q in range(len(x)) if LABELS[q] != LABELS[a]]
        if positives:
            expected.append((a, max(positives, key=lambda p: d[a, p]), min(negatives, key=lambda q: d[a, q])))
    assert as_rows(miners.HardestTriplets()(x, tf.constant(LABELS))) == expected


@pytest.mark.parametrize("seed", [2, 3])
def test_semi_hard_triplets_take_the_nearest_negative_beyond_the_positive(seed):
    x = embeddings(seed=seed)
    d = np_dist(x)
    expected = []
    for a, p in itertools.permutations(range(len(x)), 2):
        if LABELS[a] != LABELS[p]:
            continue
        negatives = [q for q in range(len(x)) if LABELS[q] != LABELS[a]]
        farther = [q for q in negatives if d[a, q] > d[a, p]]
        chosen = min(farther, key=lambda q: d[a, q]) if farther else max(negatives, key=lambda q: d[a, q])
        expected.append((a, p, chosen))
    assert as_rows(miners.SemiHardTriplets()(x, tf.constant(LABELS))) == expected


def test_semi_hard_falls_back_to_the_farthest_negative_when_none_is_beyond_the_positive():
    x = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # a=0, p=1 farther than both negatives
    triplets = miners.SemiHardTriplets()(x, tf.constant([0, 0, 1, 1]))
    assert (0, 1, 3) in as_rows(triplets)


def test_a_batch_of_one_identity_mines_no_triplet():
    for miner in miners.TRIPLET_MINERS.values():
        assert as_rows(miner()(embeddings(4), tf.constant([5, 5, 5, 5]))) == []


def test_mining_carries_no_gradient():
    x = tf.Variable(embeddings(seed=4))
    for miner in miners.TRIPLET_MINERS.values():
        with tf.GradientTape() as tape:
            chosen = miner()(x, tf.constant(LABELS))
        assert all(t.dtype.is_integer for t in chosen)
        assert tape.gradient(tf.reduce_sum(tf.cast(chosen[0], tf.float64)), x) is None


def test_sampled_pairs_match_each_first_half_row_with_its_second_half_row():
    first, second = miners.SampledPairs()(np.zeros((6, 2)), tf.constant([1.0, 0.0, 0.0]))
    assert first.numpy().tolist() == [0, 1, 2] and second.numpy().tolist() == [3, 4, 5]


@pytest.mark.parametrize("k", [2, 4])
def test_npair_sets_pair_images_2m_and_2m_plus_1_of_every_identity(k):
    p = 3
    labels = np.repeat(np.arange(p), k)
    anchors, positives = (t.numpy() for t in miners.NPairSets(k)(np.zeros((p * k, 2)), tf.constant(labels)))
    assert anchors.shape == positives.shape == (k // 2, p)
    for m, i in itertools.product(range(k // 2), range(p)):
        assert (anchors[m, i], positives[m, i]) == (i * k + 2 * m, i * k + 2 * m + 1)
        assert labels[anchors[m, i]] == labels[positives[m, i]] == i
