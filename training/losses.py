"""Metric-learning losses on L2-normalised embeddings (TensorFlow, differentiable).

All distances are plain Euclidean distances between embeddings; the square root is
taken with a floor so the gradient stays finite for identical embeddings.
"""

import tensorflow as tf

_EPS = 1e-12


def pairwise_distances(embeddings):
    """(N, D) -> (N, N) Euclidean distances (zero diagonal, finite gradients)."""
    squared = tf.reduce_sum(tf.square(embeddings), axis=1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True)
    return tf.sqrt(tf.maximum(d2, _EPS))


def _masks(labels):
    """Boolean (N, N) masks: positive pairs (same label, i != j) and negative pairs."""
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def contrastive_loss(emb_a, emb_b, similar, margin=1.0):
    """Hadsell, Chopra & LeCun (2006) contrastive loss over pairs (a_i, b_i).

    `similar` is 1 for a genuine pair (same identity: pulled together) and 0 for an
    impostor pair (pushed apart until at least `margin` away). Note that the Keras
    "Siamese contrastive" example uses the opposite convention; here 1 = similar.

        L = mean( y * d^2 + (1 - y) * max(margin - d, 0)^2 ) / 2
    """
    y = tf.cast(tf.reshape(similar, [-1]), emb_a.dtype)
    d = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(emb_a - emb_b), axis=1), _EPS))
    per_pair = y * tf.square(d) + (1.0 - y) * tf.square(tf.nn.relu(margin - d))
    return 0.5 * tf.reduce_mean(per_pair)


def _hinge(x, margin, soft):
    """max(x + margin, 0), or the soft margin log(1 + exp(x)) of Hermans et al. (2017)."""
    return tf.nn.softplus(x) if soft else tf.nn.relu(x + margin)


def triplet_batch_all(embeddings, labels, margin=0.2, soft=False):
    """Mean of the positive losses over every valid triplet (a, p, n) in the batch.

    Averaging over the triplets that still violate the margin (not over all of them) keeps
    the gradient from vanishing as easy triplets pile up (Hermans, Beyer & Leibe 2017).
    """
    d = pairwise_distances(embeddings)
    positive, negative = _masks(labels)
    valid = tf.logical_and(positive[:, :, None], negative[:, None, :])
    losses = _hinge(d[:, :, None] - d[:, None, :], margin, soft) * tf.cast(valid, d.dtype)
    active = tf.reduce_sum(tf.cast(losses > 1e-16, d.dtype))
    return tf.reduce_sum(losses) / tf.maximum(active, 1.0)


def triplet_batch_hard(embeddings, labels, margin=0.2, soft=False):
    """For each anchor, its farthest positive against its nearest negative (Hermans et al.)."""
    d = pairwise_distances(embeddings)
    positive, negative = _masks(labels)
    hardest_pos = tf.reduce_max(tf.where(positive, d, tf.zeros_like(d)), axis=1)
    big = tf.reduce_max(d) + 1.0
    hardest_neg = tf.reduce_min(tf.where(negative, d, big * tf.ones_like(d)), axis=1)
    has_both = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
    losses = _hinge(hardest_pos - hardest_neg, margin, soft)
    return tf.reduce_sum(tf.where(has_both, losses, tf.zeros_like(losses))) / tf.maximum(
        tf.reduce_sum(tf.cast(has_both, d.dtype)), 1.0)


def triplet_semi_hard(embeddings, labels, margin=0.2, soft=False):
    """FaceNet's semi-hard mining (Schroff et al. 2015) over every positive pair (a, p).

    The negative is the nearest one that is still farther than the positive
    (d(a, n) > d(a, p)); when there is none, the farthest negative is used (the rule of
    TensorFlow Addons' triplet_semihard_loss). Mean over all positive pairs.
    """
    d = pairwise_distances(embeddings)
    positive, negative = _masks(labels)
    d_ap = d[:, :, None]  # (a, p, 1)
    d_an = d[:, None, :]  # (a, 1, n)
    shape = tf.shape(d_an - d_ap)  # (a, p, n)
    outside = tf.logical_and(tf.broadcast_to(negative[:, None, :], shape), d_an > d_ap)
    big = tf.reduce_max(d) + 1.0
    nearest_outside = tf.reduce_min(tf.where(outside, tf.broadcast_to(d_an, shape), big), axis=2)
    farthest = tf.reduce_max(tf.where(negative, d, -tf.ones_like(d)), axis=1)[:, None]
    has_outside = tf.reduce_any(outside, axis=2)
    chosen = tf.where(has_outside, nearest_outside, tf.broadcast_to(farthest, tf.shape(d)))
    losses = _hinge(d - chosen, margin, soft)
    mask = tf.logical_and(positive, tf.reduce_any(negative, axis=1)[:, None])
    return tf.reduce_sum(tf.where(mask, losses, tf.zeros_like(losses))) / tf.maximum(
        tf.reduce_sum(tf.cast(mask, d.dtype)), 1.0)


def npair_loss(embeddings, p, k, temperature=0.2):
    """Multi-class N-pair loss (Sohn 2016) as in the Keras "metric learning for image
    similarity search" example: softmax cross-entropy over anchor-positive dot products.

    `embeddings` is a PK batch laid out identity-major (row i * k + j is image j of
    identity i). Images 2m and 2m + 1 of each identity form the m-th anchor / positive
    set; each anchor must pick its own identity's positive among the p positives. The
    loss is the mean over the k // 2 sets.
    """
    grid = tf.reshape(embeddings, [p, k, -1])
    targets = tf.range(p)
    total = tf.zeros([], embeddings.dtype)
    for m in range(k // 2):
        logits = tf.matmul(grid[:, 2 * m], grid[:, 2 * m + 1], transpose_b=True) / temperature
        total += tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
    return total / (k // 2)


def cosface_loss(embeddings, labels, proxies, scale=30.0, margin=0.35):
    """Large-margin cosine softmax (CosFace; Wang et al. 2018) over the training identities.

    `proxies` is a trainable (D, C) matrix, one column per training identity; `labels`
    index its columns. Each embedding's cosine to its own identity's (normalised) proxy
    is lowered by `margin` before a softmax of temperature 1 / `scale`, so identities
    must be separated by at least the margin in angle. Only the tower is kept: at test
    time verification compares embeddings, and the proxies are thrown away.
    """
    cosines = tf.matmul(embeddings, tf.math.l2_normalize(proxies, axis=0))
    onehot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), tf.shape(proxies)[1], dtype=cosines.dtype)
    logits = scale * (cosines - margin * onehot)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))


TRIPLET_MINING = {"batch-all": triplet_batch_all, "batch-hard": triplet_batch_hard,
                  "semi-hard": triplet_semi_hard}
