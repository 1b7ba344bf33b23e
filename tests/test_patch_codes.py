"""Unsupervised patch features (Coates & Ng): the PatchCodes layer against a plain numpy reading
of the same weights, their closed-form fit, and the towers that set them beside another."""

import keras
import numpy as np
import pytest

from training.heads import PATCH_HEAD_LAYER, fit_head, head_layer
from training.patch_codes import SAMPLED_PATCHES, PatchCodesError, fit_patch_codes, patch_layers, zca
from training.towers import PATCH_CENTROIDS, build_tower, default_tower, with_patch_codes
from training.trainer import TrainConfig, TrainingError, train
from verifier.core.layers import custom_objects, patch_codes
from verifier.core.profiles import get_profile


def _reference_codes(image, size, mean, whitening, centres, grid, epsilon):
    """The layer's codes of one (H, W, C) image, patch by patch in plain numpy."""
    height, width, _ = image.shape
    rows, columns = height - size + 1, width - size + 1
    pooled = np.zeros((grid, grid, len(centres)))
    for r in range(rows):
        for c in range(columns):
            patch = image[r:r + size, c:c + size, :].reshape(-1).astype(np.float64)
            patch = (patch - patch.mean()) / np.sqrt(patch.var() + epsilon)
            distances = np.linalg.norm((patch - mean) @ whitening - centres, axis=1)
            pooled[r * grid // rows, c * grid // columns] += np.maximum(distances.mean() - distances, 0)
    return pooled.reshape(-1, len(centres)).reshape(-1)


@pytest.mark.parametrize("shape, size, grid", [((9, 11, 1), 3, 2), ((8, 8, 3), 4, 3)])
def test_the_layer_encodes_every_patch_by_its_nearness_to_the_centroids_summed_over_regions(shape, size, grid):
    rng = np.random.default_rng(0)
    dims, centroids = size * size * shape[-1], 6
    layer = patch_codes(patch_size=size, centroids=centroids, grid=grid, epsilon=0.01)
    images = rng.random((2,) + shape).astype(np.float32)
    layer.build((None,) + shape)
    weights = [rng.normal(0, 0.1, dims), rng.normal(0, 1, (dims, dims)) / np.sqrt(dims), rng.normal(0, 1, (centroids, dims))]
    layer.set_weights([w.astype(np.float32) for w in weights])
    codes = np.asarray(layer(images))
    assert codes.shape == (2, grid * grid * centroids) and (codes >= 0).all() and codes.max() > 0
    for image, code in zip(images, codes):
        np.testing.assert_allclose(code, _reference_codes(image, size, *weights, grid, 0.01), rtol=1e-4, atol=1e-4)


def test_an_unfitted_layer_codes_nothing_and_a_flat_image_stays_finite():
    layer = patch_codes(patch_size=5, centroids=4, grid=2)
    assert not np.asarray(layer(np.random.default_rng(0).random((1, 12, 12, 1)).astype(np.float32))).any()
    assert not layer.trainable and not layer.trainable_weights


def test_zca_decorrelates_the_patches_and_evens_their_variances():
    rng = np.random.default_rng(0)
    patches = rng.normal(0, 1, (5000, 6)) @ rng.normal(0, 1, (6, 6))
    mean, whitening = zca(patches, epsilon=1e-6)
    covariance = np.cov((patches - mean) @ whitening, rowvar=False)
    np.testing.assert_allclose(covariance, np.eye(6), atol=1e-3)
    np.testing.assert_allclose(whitening, whitening.T, atol=1e-5)  # symmetric: a whitened patch is still a patch


def _tower_images(count=40, shape=(28, 28, 1), seed=0):
    """Stripes of a few orientations under noise: textures patches tell apart."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:shape[0], :shape[1]]
    labels = np.arange(count) % 4
    angles = labels * np.pi / 4
    stripes = np.sin((np.cos(angles)[:, None, None] * rows + np.sin(angles)[:, None, None] * columns) * 1.2)
    images = 0.5 + 0.4 * stripes[..., None] + rng.normal(0, 0.1, (count,) + shape)
    return np.clip(images, 0, 1).astype(np.float32), labels


def test_the_fit_sets_the_whitening_and_centroids_of_the_sampled_patches_the_same_for_the_same_seed():
    tower = build_tower("pixel-gradients+patches", (28, 28, 1), 32, 0.0)
    images, _ = _tower_images()
    assert fit_patch_codes(tower, images, seed=3) == 1
    (layer,) = patch_layers(tower)
    mean, whitening, centres = layer.get_weights()
    assert centres.shape == (PATCH_CENTROIDS, 25) and np.isfinite(centres).all()
    again = build_tower("pixel-gradients+patches", (28, 28, 1), 32, 0.0)
    fit_patch_codes(again, images, seed=3)
    for a, b in zip(layer.get_weights(), patch_layers(again)[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    # 40 images hold 40 x 24 x 24 = 23,040 distinct patches, fewer than SAMPLED_PATCHES: each is used once
    every = np.asarray(layer.normalized_patches(images)).reshape(-1, 25)
    assert len(every) < SAMPLED_PATCHES
    np.testing.assert_allclose(mean, every.mean(axis=0), atol=1e-5)
    with pytest.raises(PatchCodesError, match="training images to fit on"):
        fit_patch_codes(tower, images[:0])
    small = build_tower("pixel-gradients+patches", (10, 10, 1), 32, 0.0)  # 36 patches an image
    with pytest.raises(PatchCodesError, match="hold 72 patches, fewer than the 512 centroids"):
        fit_patch_codes(small, images[:2, :10, :10])


def test_a_tower_beside_patch_features_fits_both_heads_and_its_cosine_is_the_mean_of_theirs():
    tower = build_tower("pixel-gradients+patches", (28, 28, 1), 32, 0.0)
    images, labels = _tower_images()
    fit_patch_codes(tower, images)
    shrinkages = fit_head(tower, images, labels, "whiten")
    assert set(shrinkages) == {"embedding", PATCH_HEAD_LAYER}
    fused = tower.predict(images, verbose=0)
    halves = keras.Model(tower.input, [tower.get_layer("l2").output, tower.get_layer("patch_l2").output]).predict(
        images, verbose=0)
    assert fused.shape == (40, 32) and all(half.shape == (40, 16) for half in halves)
    cosines = [half[:20] @ half[20:].T for half in halves]
    np.testing.assert_allclose(fused[:20] @ fused[20:].T, (cosines[0] + cosines[1]) / 2, atol=1e-5)
    for half in halves:  # each side on its own separates the stripes' orientations
        same = labels[:, None] == labels[None, :]
        similarity = half @ half.T
        assert similarity[same].mean() > similarity[~same].mean() + 0.3
    assert head_layer(tower).units == tower.get_layer(PATCH_HEAD_LAYER).units == 16


def test_a_fused_tower_saves_and_loads_in_safe_mode(tmp_path):
    tower = build_tower("pixel-gradients+patches", (28, 28, 1), 32, 0.0)
    images, labels = _tower_images()
    fit_patch_codes(tower, images)
    fit_head(tower, images, labels, "whiten")
    tower.save(tmp_path / "tower.keras")
    loaded = keras.saving.load_model(tmp_path / "tower.keras", safe_mode=True, custom_objects=custom_objects())
    np.testing.assert_allclose(loaded.predict(images, verbose=0), tower.predict(images, verbose=0), atol=1e-6)


def test_patch_features_are_for_thumbnails_and_an_even_embedding():
    with pytest.raises(ValueError, match="thumbnails of at most 64 px a side, not 96x96x1"):
        with_patch_codes(build_tower("small", (96, 96, 1), 16), 16)
    with pytest.raises(ValueError, match="odd"):
        build_tower("pixel-gradients+patches", (28, 28, 1), 33, 0.0)
    assert default_tower("small-grey") == "pixel-gradients+patches"
    assert default_tower("small-colour") == "imagenet-mobilenetv2+patches"
    config = TrainConfig(tower="pixel-gradients+patches")
    assert (config.head, config.epochs, config.embedding_size, config.dropout) == ("lda", 0, 256, 0.0)


def test_training_fits_the_patch_features_before_the_heads_and_reports_both_shrinkages():
    images, labels = _tower_images(48)
    config = TrainConfig(tower="pixel-gradients+patches", head="whiten", embedding_size=16)
    result = train(config, images, labels, get_profile("small-grey"), verbose=False)
    assert set(result.head_shrinkage) == {"embedding", PATCH_HEAD_LAYER}
    assert patch_layers(result.tower)[0].get_weights()[2].any()
    with pytest.raises(TrainingError, match="2 training identities"):
        train(config, images, np.zeros(48, int), get_profile("small-grey"), verbose=False)
