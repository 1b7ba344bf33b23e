"""Embed batches of images with a bundle's tower through one fixed-signature tf.function.

`model.predict` rebuilds its machinery on every call (~80 ms); a traced function with a
fixed input signature is traced once and then costs only the forward pass.
"""

import numpy as np

from verifier.core.acquisition import acquire_all


class Embedder:
    """Images or preprocessed batches -> float32 embeddings, in chunks of `batch_size`."""

    def __init__(self, model, profile, batch_size=64):
        import tensorflow as tf

        self.profile = profile
        self.batch_size = batch_size
        spec = tf.TensorSpec((None,) + profile.input_shape, tf.float32)
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    @classmethod
    def from_bundle(cls, bundle, batch_size=64):
        return cls(bundle.model, bundle.profile, batch_size)

    def embed_batch(self, batch):
        """(N, H, W, C) preprocessed float32 -> (N, D) embeddings."""
        batch = np.asarray(batch, dtype=np.float32)
        if len(batch) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        chunks = [self._forward(batch[i:i + self.batch_size]).numpy()
                  for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(chunks)

    def embed_images(self, images):
        """Decoded uint8 images -> embeddings, with the bundle's own acquisition and preprocessing
        (NoFaceFound when a face profile finds no face in one)."""
        return self.embed_batch(acquire_all(images, self.profile).inputs)
