"""Fitting the unsupervised patch features of `verifier.core.layers` PatchCodes in closed form
(Coates & Ng 2011): a seeded sample of the training images' contrast-normalised patches, their
ZCA whitening, and k-means centroids of the whitened patches. No labels enter: the head fitted
on the codes afterwards (training.heads) is what learns how the training identities differ.

    fit_patch_codes(tower, images, seed)   sets every PatchCodes layer of `tower` in place
"""

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from verifier.core.layers import custom_objects

SAMPLED_PATCHES = 100_000  # Coates & Ng's count; fewer left grey thumbnails' centroids noisier
ZCA_EPSILON = 0.1  # added to the whitened variances: the patches' faint directions stay faint
BATCH = 256


class PatchCodesError(ValueError):
    """Patch features that cannot be fitted (no images, or fewer patches than centroids)."""


def patch_layers(tower):
    """The tower's PatchCodes layers (none for most towers)."""
    return [layer for layer in tower.layers if isinstance(layer, custom_objects()["verifier>PatchCodes"])]


def sampled_patches(layer, images, count, rng):
    """(at most count, p * p * channels): normalised patches at seeded distinct positions, about as
    many from each image (all of them where the images hold fewer)."""
    per_image = -(-count // len(images))
    sampled = []
    for start in range(0, len(images), BATCH):
        patches = np.asarray(layer.normalized_patches(images[start:start + BATCH].astype(np.float32)))
        flat = patches.reshape(len(patches), -1, patches.shape[-1])
        every = np.broadcast_to(np.arange(flat.shape[1]), flat.shape[:2])
        positions = rng.permuted(every, axis=1)[:, :per_image]
        sampled.append(np.take_along_axis(flat, positions[..., None], axis=1).reshape(-1, flat.shape[-1]))
    patches = np.concatenate(sampled)
    return patches[rng.permutation(len(patches))[:count]]


def zca(patches, epsilon=ZCA_EPSILON):
    """(mean, whitening matrix): x -> (x - mean) @ whitening decorrelates the patches and evens out
    their variances (symmetric, so a whitened patch still looks like a patch)."""
    patches = np.asarray(patches, np.float64)
    mean = patches.mean(axis=0)
    variances, axes = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    whitening = axes @ np.diag(1 / np.sqrt(np.maximum(variances, 0) + epsilon)) @ axes.T
    return mean.astype(np.float32), whitening.astype(np.float32)


def fit_patch_codes(tower, images, seed=0):
    """Fit each PatchCodes layer of `tower` on preprocessed `images` (N, H, W, C); the number fitted."""
    layers = patch_layers(tower)
    if layers and not len(images):
        raise PatchCodesError("patch features need training images to fit on")
    rng = np.random.default_rng(seed)
    for layer in layers:
        patches = sampled_patches(layer, np.asarray(images), SAMPLED_PATCHES, rng)
        if len(patches) < layer.centroids:
            raise PatchCodesError(f"the training images hold {len(patches)} patches, fewer than the "
                                  f"{layer.centroids} centroids to fit: more or larger images, or another tower")
        mean, whitening = zca(patches)
        kmeans = MiniBatchKMeans(layer.centroids, batch_size=4096, n_init=3, random_state=seed)
        kmeans.fit((patches - mean) @ whitening)
        layer.set_weights([mean, whitening, kmeans.cluster_centers_.astype(np.float32)])
    return len(layers)
