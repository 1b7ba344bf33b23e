"""Miners: which tuples of a batch a loss is computed on, as index tensors.

A miner is called as `miner(embeddings, labels)` and returns a tuple of int64 index
vectors into the batch: (anchor, positive, negative) for triplets, (first, second) for
pairs, (anchors, positives) for N-pair sets. The choice carries no gradient; the loss
recomputes the distances it differentiates.
"""

import tensorflow as tf

from training.losses import EMBEDDING_DISTANCE


def label_masks(labels):
    """Boolean (N, N) masks: positive pairs (same label, i != j) and negative pairs."""
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


class AllTriplets:
    """Every valid triplet (a, p, n): a != p share a label, n has another ("batch-all")."""

    def __call__(self, embeddings, labels):
        positive, negative = label_masks(labels)
        found = tf.where(tf.logical_and(positive[:, :, None], negative[:, None, :]))
        return found[:, 0], found[:, 1], found[:, 2]


class HardestTriplets:
    """For each anchor with a positive and a negative: its farthest positive and nearest
    negative ("batch-hard"; Hermans, Beyer & Leibe 2017)."""

    def __init__(self, distance=EMBEDDING_DISTANCE):
        self.distance = distance

    def __call__(self, embeddings, labels):
        d = tf.stop_gradient(self.distance.cross(embeddings, embeddings))
        positive, negative = label_masks(labels)
        farthest_positive = tf.argmax(tf.where(positive, d, -1.0), axis=1)
        nearest_negative = tf.argmin(tf.where(negative, d, tf.reduce_max(d) + 1.0), axis=1)
        anchor = tf.where(tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1)))[:, 0]
        return anchor, tf.gather(farthest_positive, anchor), tf.gather(nearest_negative, anchor)


class SemiHardTriplets:
    """FaceNet's semi-hard mining (Schroff et al. 2015): for every positive pair (a, p) whose
    anchor has a negative, the nearest negative still farther than the positive
    (d(a, n) > d(a, p)), or when there is none the farthest negative (the rule of
    TensorFlow Addons' triplet_semihard_loss)."""

    def __init__(self, distance=EMBEDDING_DISTANCE):
        self.distance = distance

    def __call__(self, embeddings, labels):
        d = tf.stop_gradient(self.distance.cross(embeddings, embeddings))
        positive, negative = label_masks(labels)
        pairs = tf.where(tf.logical_and(positive, tf.reduce_any(negative, axis=1)[:, None]))
        anchor, pos = pairs[:, 0], pairs[:, 1]
        to_all = tf.gather(d, anchor)  # (pairs, N): each pair's anchor to every image
        is_negative = tf.gather(negative, anchor)
        outside = tf.logical_and(is_negative, to_all > tf.gather_nd(d, pairs)[:, None])
        nearest_outside = tf.argmin(tf.where(outside, to_all, tf.reduce_max(d) + 1.0), axis=1)
        farthest = tf.argmax(tf.where(is_negative, to_all, -1.0), axis=1)
        return anchor, pos, tf.where(tf.reduce_any(outside, axis=1), nearest_outside, farthest)


TRIPLET_MINERS = {"batch-all": AllTriplets, "batch-hard": HardestTriplets, "semi-hard": SemiHardTriplets}


class SampledPairs:
    """The pairs a PairSampler laid out: row i of the first half against row i of the second."""

    def __call__(self, embeddings, labels):
        n = tf.shape(embeddings, out_type=tf.int64)[0] // 2
        return tf.range(n), tf.range(n, 2 * n)


class NPairSets:
    """N-pair sets of a PK batch laid out identity-major (row i * k + j is image j of
    identity i): images 2m and 2m + 1 of each identity are the m-th set's anchor and
    positive. Returns (anchors, positives), each (k // 2, identities)."""

    def __init__(self, k):
        self.k = k

    def __call__(self, embeddings, labels):
        grid = tf.reshape(tf.range(tf.shape(embeddings, out_type=tf.int64)[0]), [-1, self.k])
        used = 2 * (self.k // 2)
        return tf.transpose(grid[:, 0:used:2]), tf.transpose(grid[:, 1:used:2])
