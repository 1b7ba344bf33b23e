"""The tf.data input pipeline: sampler indices -> gathered images -> augmented batches.

Preprocessed images live in one constant tensor; each element of the data set is one
batch, built from the sampler's indices for that step and augmented with a stateless
seed derived from (seed, step). A run started at any step therefore reproduces the
batches of an uninterrupted run, which is what makes resuming exact.
"""

import numpy as np
import tensorflow as tf

from training.augment import augment_batch


def training_batches(images, labels, sampler, augmentation, normalize, seed, start_step, end_step,
                     pair_labels=None):
    """A tf.data.Dataset of (images, targets) for steps [start_step, end_step).

    targets are the batch's identity labels (PK batches) or, when `pair_labels` is given,
    that fixed similar/impostor vector (pair batches: first half `a`, second half `b`).
    """
    images = tf.constant(np.asarray(images, np.float32))
    labels = tf.constant(np.asarray(labels, np.int32))
    batch_size = sampler.batch_size
    fixed = None if pair_labels is None else tf.constant(pair_labels)

    def build(step):
        indices = tf.numpy_function(sampler.batch, [step], tf.int64, stateful=False)
        indices.set_shape([batch_size])
        x = tf.gather(images, indices)
        x = augment_batch(x, tf.stack([tf.constant(seed, tf.int64), step]), augmentation, normalize)
        y = tf.gather(labels, indices) if fixed is None else fixed
        return x, y

    steps = tf.data.Dataset.range(start_step, end_step)
    return steps.map(build, num_parallel_calls=1, deterministic=True).prefetch(2)
