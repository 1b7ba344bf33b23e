"""A tower's projection head fitted in closed form: shrinkage LDA of the features it reads.

For a frozen pretrained backbone the head is the only thing learnt, and a linear discriminant
(Fisher's: the directions that spread the training identities apart relative to how their
own images vary) fits it in seconds, where a head trained with a metric loss took many
epochs and generalised worse to unseen products (README, Products: grocery 16.7-17.0% EER
against 21.6%). Shrinking the within-identity covariance towards a scaled identity keeps it
well conditioned with fewer images than feature dimensions.

    fit_lda_head(tower, images, labels)   sets tower's `embedding` Dense layer in place
"""

import keras
import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

HEADS = ("learnt", "lda")
HEAD_LAYER = "embedding"
LDA_SHRINKAGE = 0.4  # 0.2-0.6 were within 0.2 points of each other on grocery's folds
LDA_MIN_IDENTITIES = 10  # below this, on grocery, the discriminant's few directions lost to the raw features


class HeadError(ValueError):
    """A head that cannot be fitted as asked (no such layer, too few identities)."""


def head_layer(tower):
    """The tower's Dense projection that a head fit replaces; a HeadError when it has none."""
    try:
        layer = tower.get_layer(HEAD_LAYER)
    except ValueError:
        layer = None
    if not isinstance(layer, keras.layers.Dense):
        raise HeadError(f"the {tower.name} tower has no Dense `{HEAD_LAYER}` layer for an LDA head")
    return layer


def lda_projection(features, labels, units, shrinkage=LDA_SHRINKAGE):
    """(kernel (d, units), bias (units,)): centred features onto the discriminant directions.

    There are at most identities - 1 of them; the kernel's other columns are 0, so those
    embedding dimensions stay 0 until training (if any) uses them.
    """
    features = np.asarray(features, np.float64)
    identities = len(np.unique(labels))
    if identities < LDA_MIN_IDENTITIES:
        raise HeadError(f"an LDA head needs at least {LDA_MIN_IDENTITIES} training identities, not "
                        f"{identities}: with fewer its directions do worse than the features themselves "
                        "(--head learnt trains the head with the loss instead)")
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(features, labels)
    used = min(units, identities - 1)
    kernel = np.zeros((features.shape[1], units))
    kernel[:, :used] = lda.scalings_[:, :used]
    bias = -features.mean(axis=0) @ kernel
    return kernel.astype(np.float32), bias.astype(np.float32)


def fit_lda_head(tower, images, labels, shrinkage=LDA_SHRINKAGE, batch_size=64):
    """Set the tower's head to the LDA of its features on preprocessed `images` (inference mode)."""
    layer = head_layer(tower)
    features = keras.Model(tower.input, layer.input).predict(images, batch_size=batch_size, verbose=0)
    layer.set_weights(list(lda_projection(features, labels, layer.units, shrinkage)))
