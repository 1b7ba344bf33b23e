"""Reducers: a batch's per-tuple losses -> the one scalar that training minimises."""

import tensorflow as tf

ACTIVE = 1e-16  # a per-tuple loss above this still violates the margin


def mean(losses):
    """Mean of the per-tuple losses; 0 for a batch where nothing was mined."""
    return tf.reduce_sum(losses) / tf.maximum(tf.cast(tf.size(losses), losses.dtype), 1.0)


def mean_over_nonzero(losses):
    """Mean over the tuples whose loss is not zero: easy tuples piling up do not dilute the
    gradient of the hard ones (batch-all; Hermans, Beyer & Leibe 2017)."""
    active = tf.reduce_sum(tf.cast(losses > ACTIVE, losses.dtype))
    return tf.reduce_sum(losses) / tf.maximum(active, 1.0)
