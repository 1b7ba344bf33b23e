"""Keras layers a bundle may hold beyond Keras's own, built on first use so that importing
verifier.core stays free of TensorFlow. `custom_objects()` registers them and returns them
for `keras.saving.load_model` (safe mode loads registered classes, never code from the file).
"""

from functools import cache


@cache
def custom_objects():
    """{registered name: class} of the project's layers (imports Keras on the first call)."""
    import keras

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

    return {"verifier>SafeUnitNormalization": SafeUnitNormalization, "verifier>SquareRoot": SquareRoot}


def safe_unit_normalization(**kwargs):
    """A SafeUnitNormalization layer (see `custom_objects`)."""
    return custom_objects()["verifier>SafeUnitNormalization"](**kwargs)


def square_root(**kwargs):
    """A SquareRoot layer (see `custom_objects`)."""
    return custom_objects()["verifier>SquareRoot"](**kwargs)
