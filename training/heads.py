"""A tower's projection head fitted in closed form from the features it reads.

For a frozen pretrained backbone the head is the only thing learnt, and a linear map fitted
in seconds generalised better to unseen products than a head trained with a metric loss for
many epochs (README, Products: grocery 17.0% EER against 21.6%):

    lda      Fisher's discriminant: the directions that spread the training identities apart
             relative to how their own images vary (at most identities - 1 of them); from
             LDA_MIN_IDENTITIES training identities
    whiten   the features' principal directions, whitened by how an identity's own images
             vary there: needs no between-identity directions, so it serves from 2 identities

Both shrink the within-identity covariance towards a scaled identity, which keeps it well
conditioned with fewer images than feature dimensions. LDA shrinks by SHRINKAGE; whitening,
fitted on few identities where no one constant served (README, Fashion-MNIST), by the value
of WHITENING_SHRINKAGES that verifies best when each training identity in turn is left out
(`chosen_shrinkage`; 1.0 is no whitening at all, the principal directions alone).

    fit_head(tower, images, labels, "lda")   sets tower's `embedding` Dense layer in place
                                             (and `patch_embedding`, where there is one)
"""

import keras
import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from calibration.metrics import eer

HEADS = ("learnt", "lda", "whiten")
FITTED_HEADS = ("lda", "whiten")  # fitted in closed form: no epochs
HEAD_LAYER = "embedding"
PATCH_HEAD_LAYER = "patch_embedding"  # the second head of a tower beside patch features (training.towers)
FITTED_EMBEDDING = 128  # a fitted head's default size: the principal directions whitening keeps
SHRINKAGE = 0.4  # LDA: 0.2-0.6 were within 0.2 points of each other on grocery's folds
WHITENING_SHRINKAGES = (0.2, 0.4, 0.6, 0.8, 1.0)
PAIRS_PER_IDENTITY = 20000  # genuine and impostor comparisons a left-out identity, at most (a seeded sample)
# below this, on grocery, the discriminant's few directions lost to the features themselves,
# and whitening beat both (README, Products)
LDA_MIN_IDENTITIES = 10


class HeadError(ValueError):
    """A head that cannot be fitted as asked (no such layer, too few identities)."""


def head_layer(tower):
    """The tower's Dense projection that a head fit replaces; a HeadError when it has none."""
    try:
        layer = tower.get_layer(HEAD_LAYER)
    except ValueError:
        layer = None
    if not isinstance(layer, keras.layers.Dense):
        raise HeadError(f"the {tower.name} tower has no Dense `{HEAD_LAYER}` layer for a fitted head")
    return layer


def fitted_head(identities):
    """The closed-form head for `identities` training identities: LDA from LDA_MIN_IDENTITIES, else whitening."""
    return "lda" if identities >= LDA_MIN_IDENTITIES else "whiten"


def lda_projection(features, labels, units, shrinkage=SHRINKAGE):
    """(kernel (d, units), bias (units,)): centred features onto the discriminant directions.

    There are at most identities - 1 of them; the kernel's other columns are 0, so those
    embedding dimensions stay 0 until training (if any) uses them.
    """
    features = np.asarray(features, np.float64)
    identities = len(np.unique(labels))
    if identities < LDA_MIN_IDENTITIES:
        raise HeadError(f"an LDA head needs at least {LDA_MIN_IDENTITIES} training identities, not "
                        f"{identities}: with fewer its directions do worse than the features themselves "
                        "(--head whiten fits one that needs no such directions, --head learnt trains it with the loss)")
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(features, labels)
    used = min(units, identities - 1)
    kernel = np.zeros((features.shape[1], units))
    kernel[:, :used] = lda.scalings_[:, :used]
    bias = -features.mean(axis=0) @ kernel
    return kernel.astype(np.float32), bias.astype(np.float32)


def principal_directions(centred, count):
    """(d, k) orthonormal columns: the first `count` principal directions of the centred rows,
    at most as many as they span. From the smaller of their Gram and covariance matrices: with
    fewer images than feature dimensions (patch features) this is many times faster than an SVD.
    In float64 whatever comes in: the Gram matrix squares the singular values, and float32 would
    keep rounding noise as directions."""
    centred = np.asarray(centred, np.float64)
    gram = len(centred) < centred.shape[1]
    variances, vectors = np.linalg.eigh(centred @ centred.T if gram else centred.T @ centred)
    variances, vectors = variances[::-1], vectors[:, ::-1]
    # the Gram matrix squares the singular values, so its smallest eigenvalues are rounding noise
    spanned = int((variances > variances[0] * 1e-10).sum())  # centred rows span at most n - 1
    vectors = vectors[:, :min(count, spanned)]
    if not gram:
        return vectors
    return centred.T @ (vectors / np.sqrt(variances[:vectors.shape[1]]))


def whitening_projection(features, labels, units, shrinkage=SHRINKAGE):
    """(kernel (d, units), bias (units,)): centred features onto their first `units` principal
    directions, then whitened there by the shrunk within-identity covariance, so that the
    directions in which an identity's own images vary count for less."""
    return whitening_projections(features, labels, units, (shrinkage,))[shrinkage]


def whitening_projections(features, labels, units, shrinkages):
    """{shrinkage: (kernel, bias)} of `whitening_projection` for each shrinkage, from one
    decomposition of the features."""
    features = np.asarray(features, np.float64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if (counts >= 2).sum() < 2:
        raise HeadError("a whitening head needs at least 2 training identities with 2+ images: it learns how "
                        "an identity's own images vary against how all of them do")
    mean = features.mean(axis=0)
    centred = features - mean
    basis = principal_directions(centred, units)  # (d, k)
    if not basis.shape[1]:
        raise HeadError("the training images' features are all the same: there is nothing to whiten")
    projected = centred @ basis
    sums = np.zeros((len(counts), basis.shape[1]))
    np.add.at(sums, inverse, projected)
    paired = counts[inverse] >= 2  # an identity's only image says nothing of how its images vary
    residuals = (projected - (sums / counts[:, None])[inverse])[paired]
    within = residuals.T @ residuals / len(residuals)
    projections = {}
    for shrinkage in shrinkages:
        shrunk = (1 - shrinkage) * within + shrinkage * np.trace(within) / len(within) * np.eye(len(within))
        variances, axes = np.linalg.eigh(shrunk)
        if not variances.min() > 1e-12 * variances.max():  # scale-free: all 0 when nothing varies
            raise HeadError("the training identities' images do not vary: there is nothing to whiten")
        kernel = np.zeros((features.shape[1], units))
        kernel[:, :basis.shape[1]] = basis @ (axes / np.sqrt(variances))
        projections[shrinkage] = kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)
    return projections


PROJECTIONS = {"lda": lda_projection, "whiten": whitening_projection}


def _left_out_eers(features, labels, left_out, units, grid, rng):
    """{shrinkage: EER} of the whitening fitted without identity `left_out`: its own images'
    pairs against its images paired with the others' (unit embeddings, euclidean)."""
    rest = labels != left_out
    mine, others = np.flatnonzero(~rest), np.flatnonzero(rest)
    first, second = np.triu_indices(len(mine), k=1)
    if len(first) > PAIRS_PER_IDENTITY:
        keep = rng.choice(len(first), PAIRS_PER_IDENTITY, replace=False)
        first, second = first[keep], second[keep]
    probe, other = rng.choice(mine, PAIRS_PER_IDENTITY), rng.choice(others, PAIRS_PER_IDENTITY)
    eers = {}
    for shrinkage, (kernel, bias) in whitening_projections(features[rest], labels[rest], units, grid).items():
        embedded = features @ kernel + bias
        embedded /= np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
        genuine = np.linalg.norm(embedded[mine[first]] - embedded[mine[second]], axis=1)
        impostor = np.linalg.norm(embedded[probe] - embedded[other], axis=1)
        eers[shrinkage] = eer(genuine, impostor).value
    return eers


def chosen_shrinkage(features, labels, units, grid=WHITENING_SHRINKAGES, seed=0):
    """(shrinkage, {shrinkage: mean EER}): the whitening shrinkage in `grid` whose head
    verifies best on each training identity with 2+ images left out in turn (the first of
    equals); SHRINKAGE, with no scores, when fewer than 3 such identities leave nothing to
    leave out."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    paired = names[counts >= 2]
    if len(paired) < 3:
        return SHRINKAGE, {}
    rng = np.random.default_rng(seed)
    left_out = [_left_out_eers(features, labels, name, units, grid, rng) for name in paired]
    scores = {shrinkage: float(np.mean([eers[shrinkage] for eers in left_out])) for shrinkage in grid}
    return min(scores, key=scores.get), scores


def fit_head(tower, images, labels, head, batch_size=64):
    """Set the tower's head to `head`'s projection (FITTED_HEADS) of its features on
    preprocessed `images` (inference mode); {head layer: the shrinkage it used}. A tower beside
    patch features has a second head (PATCH_HEAD_LAYER), fitted the same way on its own features."""
    layers = [head_layer(tower)] + [layer for layer in tower.layers if layer.name == PATCH_HEAD_LAYER]
    features = keras.Model(tower.input, {layer.name: layer.input for layer in layers}).predict(
        images, batch_size=batch_size, verbose=0)
    shrinkages = {}
    for layer in layers:
        read = features[layer.name]
        shrinkage = chosen_shrinkage(read, labels, layer.units)[0] if head == "whiten" else SHRINKAGE
        layer.set_weights(list(PROJECTIONS[head](read, labels, layer.units, shrinkage)))
        shrinkages[layer.name] = shrinkage
    return shrinkages
