"""Metric-learning losses on L2-normalised embeddings (TensorFlow, differentiable).

Every loss is called as `loss(embeddings, labels, tuples)`: `tuples` are the index
tuples a miner picked from the batch (`training.miners`), the loss scores each tuple,
and its reducer (`training.reducers`) turns those scores into the scalar to minimise.
Distances are the formulas of `verifier.core.distances`, run on TensorFlow tensors.
"""

from types import SimpleNamespace

import tensorflow as tf

from training import reducers
from verifier.core.distances import Euclidean


def _inner(a, b):
    """Inner products of every row of `a` with every row of `b` (numpy's `np.inner`)."""
    return tf.matmul(a, b, transpose_b=True)


# the array namespace verifier.core.distances is written against, on TensorFlow tensors
TENSOR_OPS = SimpleNamespace(sum=tf.reduce_sum, sqrt=tf.sqrt, maximum=tf.maximum, square=tf.square, inner=_inner)
EMBEDDING_DISTANCE = Euclidean(TENSOR_OPS, floor=1e-12)  # floored: finite gradients for identical embeddings


class ContrastiveLoss:
    """Hadsell, Chopra & LeCun (2006) over pairs (first_i, second_i), per pair

        L = (y * d^2 + (1 - y) * max(margin - d, 0)^2) / 2

    `labels` is 1 for a genuine pair (same identity: pulled together) and 0 for an impostor
    pair (pushed apart until at least `margin` away). Note that the Keras "Siamese
    contrastive" example uses the opposite convention; here 1 = similar.
    """

    def __init__(self, margin=1.0, distance=EMBEDDING_DISTANCE, reducer=reducers.mean):
        self.margin = margin
        self.distance = distance
        self.reducer = reducer

    def __call__(self, embeddings, labels, pairs):
        first, second = pairs
        d = self.distance.pair(tf.gather(embeddings, first), tf.gather(embeddings, second))
        y = tf.cast(tf.reshape(labels, [-1]), d.dtype)
        return self.reducer(0.5 * (y * tf.square(d) + (1.0 - y) * tf.square(tf.nn.relu(self.margin - d))))


class TripletMarginLoss:
    """max(d(a, p) - d(a, n) + margin, 0) per triplet (a, p, n), or with `soft` the soft
    margin log(1 + exp(d(a, p) - d(a, n))) of Hermans et al. (2017). `labels` is unused:
    the triplets say who is whose positive."""

    def __init__(self, margin=0.2, soft=False, distance=EMBEDDING_DISTANCE, reducer=reducers.mean):
        self.margin = margin
        self.soft = soft
        self.distance = distance
        self.reducer = reducer

    def __call__(self, embeddings, labels, triplets):
        anchor, positive, negative = triplets
        d = self.distance.cross(embeddings, embeddings)
        gap = tf.gather_nd(d, tf.stack([anchor, positive], 1)) - tf.gather_nd(d, tf.stack([anchor, negative], 1))
        return self.reducer(tf.nn.softplus(gap) if self.soft else tf.nn.relu(gap + self.margin))


class NPairLoss:
    """Multi-class N-pair loss (Sohn 2016) as in the Keras "metric learning for image
    similarity search" example: within each set of anchors and positives (one of each per
    identity, in the same order), each anchor must pick its own identity's positive by a
    softmax over dot products. `labels` is unused: the sets say who matches whom."""

    def __init__(self, temperature=0.2, reducer=reducers.mean):
        self.temperature = temperature
        self.reducer = reducer

    def __call__(self, embeddings, labels, sets):
        anchors, positives = sets  # (sets, identities) row indices each
        logits = tf.matmul(tf.gather(embeddings, anchors), tf.gather(embeddings, positives),
                           transpose_b=True) / self.temperature
        targets = tf.broadcast_to(tf.range(tf.shape(anchors)[1]), tf.shape(anchors))
        return self.reducer(tf.reshape(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits), [-1]))


class CosFaceLoss:
    """Large-margin cosine softmax (CosFace; Wang et al. 2018) over the training identities.

    `proxies` is a trainable (D, C) matrix, one column per training identity; `labels`
    index its columns. Each embedding's cosine to its own identity's (normalised) proxy
    is lowered by `margin` before a softmax of temperature 1 / `scale`, so identities
    must be separated by at least the margin in angle. Only the tower is kept: at test
    time verification compares embeddings, and the proxies are thrown away. Nothing is
    mined: every embedding is scored against every proxy.
    """

    def __init__(self, proxies, scale=30.0, margin=0.35, reducer=reducers.mean):
        self.proxies = proxies
        self.scale = scale
        self.margin = margin
        self.reducer = reducer

    def __call__(self, embeddings, labels, tuples=()):
        cosines = tf.matmul(embeddings, tf.math.l2_normalize(self.proxies, axis=0))
        onehot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), tf.shape(self.proxies)[1],
                            dtype=cosines.dtype)
        logits = self.scale * (cosines - self.margin * onehot)
        return self.reducer(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
