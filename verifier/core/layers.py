"""Keras layers a bundle may hold beyond Keras's own, built on first use so that importing
verifier.core stays free of TensorFlow. `custom_objects()` registers them and returns them
for `keras.saving.load_model` (safe mode loads registered classes, never code from the file).
"""

from functools import cache


@cache
def custom_objects():
    """{registered name: class} of the project's layers (imports Keras on the first call)."""
    import keras
    import numpy as np

    @keras.saving.register_keras_serializable(package="verifier")
    class SafeUnitNormalization(keras.layers.Layer):
        """x / ||x|| along `axis`, with a zero vector kept at zero, also once exported to TFLite.

        Keras's UnitNormalization becomes TFLite's fused L2 normalisation, which gives NaN for a
        zero vector: a cell of a blank page, after rectified gradients, is exactly that.
        """

        def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
            super().__init__(**kwargs)
            self.axis, self.epsilon = axis, epsilon

        def call(self, x):
            squares = keras.ops.sum(keras.ops.square(x), axis=self.axis, keepdims=True)
            return x * keras.ops.rsqrt(keras.ops.maximum(squares, self.epsilon))

        def get_config(self):
            return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}

    @keras.saving.register_keras_serializable(package="verifier")
    class SquareRoot(keras.layers.Layer):
        """Elementwise square root of a non-negative input (negatives count as 0): a histogram's
        square root, under which cosine similarity is the Bhattacharyya coefficient (Hellinger)."""

        def call(self, x):
            return keras.ops.sqrt(keras.ops.maximum(x, 0.0))

    @keras.saving.register_keras_serializable(package="verifier")
    class PatchCodes(keras.layers.Layer):
        """Unsupervised patch features (Coates & Ng 2011): every `patch_size` square patch of the
        image, contrast-normalised, ZCA-whitened and encoded by its distance to each of `centroids`
        k-means centroids (triangle encoding: how much nearer than average, else 0), the codes
        summed over a `grid` x `grid` of image regions: (batch, grid * grid * centroids).

        Its weights are fitted in closed form (training.patch_codes), never by gradients; until
        then they are 0 and so is every code.
        """

        def __init__(self, patch_size, centroids, grid, epsilon=0.01, **kwargs):
            super().__init__(**{**kwargs, "trainable": False})  # fitted in closed form, never by gradients
            self.patch_size, self.centroids, self.grid, self.epsilon = patch_size, centroids, grid, epsilon

        def build(self, input_shape):
            _, height, width, channels = input_shape
            size = self.patch_size * self.patch_size * channels
            self.rows, self.columns = height - self.patch_size + 1, width - self.patch_size + 1
            self.patch_mean = self.add_weight(shape=(size,), initializer="zeros", trainable=False,
                                              name="patch_mean")
            self.whitening = self.add_weight(shape=(size, size), initializer="zeros", trainable=False,
                                             name="whitening")
            self.centres = self.add_weight(shape=(self.centroids, size), initializer="zeros", trainable=False,
                                           name="centres")
            # region r of the grid sums the positions whose row and column bands are r's
            row_bands = np.arange(self.rows) * self.grid // self.rows
            column_bands = np.arange(self.columns) * self.grid // self.columns
            regions = (row_bands[:, None] * self.grid + column_bands[None, :]).reshape(-1)
            self.pooling = (regions[:, None] == np.arange(self.grid * self.grid)[None, :]).astype("float32")

        def normalized_patches(self, x):
            """(batch, rows, columns, p * p * channels): each patch, pixels row-major then channel,
            less its own mean and over its own spread (plus `epsilon`, which keeps flat patches flat)."""
            size = self.patch_mean.shape[0]
            extract = keras.ops.reshape(keras.ops.eye(size), (self.patch_size, self.patch_size, -1, size))
            patches = keras.ops.conv(x, extract, padding="valid")
            centred = patches - keras.ops.mean(patches, axis=-1, keepdims=True)
            spread = keras.ops.mean(keras.ops.square(centred), axis=-1, keepdims=True)
            return centred * keras.ops.rsqrt(spread + self.epsilon)

        def call(self, x):
            white = keras.ops.matmul(self.normalized_patches(x) - self.patch_mean, self.whitening)
            white = keras.ops.reshape(white, (-1, self.rows * self.columns, white.shape[-1]))
            squares = (keras.ops.sum(keras.ops.square(white), axis=-1, keepdims=True)
                       - 2 * keras.ops.matmul(white, keras.ops.transpose(self.centres))
                       + keras.ops.sum(keras.ops.square(self.centres), axis=-1))
            distances = keras.ops.sqrt(keras.ops.maximum(squares, 0.0))
            codes = keras.ops.relu(keras.ops.mean(distances, axis=-1, keepdims=True) - distances)
            pooled = keras.ops.einsum("bpk,pr->brk", codes, keras.ops.convert_to_tensor(self.pooling))
            return keras.ops.reshape(pooled, (-1, self.grid * self.grid * self.centroids))

        def compute_output_shape(self, input_shape):
            return input_shape[0], self.grid * self.grid * self.centroids

        def get_config(self):
            return {**super().get_config(), "patch_size": self.patch_size, "centroids": self.centroids,
                    "grid": self.grid, "epsilon": self.epsilon}

    return {"verifier>SafeUnitNormalization": SafeUnitNormalization, "verifier>SquareRoot": SquareRoot,
            "verifier>PatchCodes": PatchCodes}


def safe_unit_normalization(**kwargs):
    """A SafeUnitNormalization layer (see `custom_objects`)."""
    return custom_objects()["verifier>SafeUnitNormalization"](**kwargs)


def square_root(**kwargs):
    """A SquareRoot layer (see `custom_objects`)."""
    return custom_objects()["verifier>SquareRoot"](**kwargs)


def patch_codes(**kwargs):
    """A PatchCodes layer (see `custom_objects`)."""
    return custom_objects()["verifier>PatchCodes"](**kwargs)
