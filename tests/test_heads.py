"""The heads fitted in closed form (LDA, whitening): each projection on features, put into a
tower's Dense layer, chosen by the CLI for the pretrained generic tower by how many identities
there are."""

import cv2
import keras
import numpy as np
import pytest

from calibration.metrics import eer
from tests.test_imagenet_mobilenet import _weights_like
from training import imagenet_mobilenet as im
from training.cli import main
from training.heads import (LDA_MIN_IDENTITIES, SHRINKAGE, HeadError, chosen_shrinkage, fit_head, fitted_head,
                            head_layer, lda_projection, principal_directions, whitening_projection)
from training.towers import build_tower, default_tower
from training.trainer import ConfigError, TrainConfig, TrainingError, default_head, train
from verifier.core.bundle import load_bundle
from verifier.core.profiles import get_profile


def _clustered(identities=12, per_identity=30, dims=40, seed=0):
    """Features whose identities differ along 11 directions, under noise 3x larger along the other 29."""
    signal = 11
    centres = np.zeros((identities, dims))
    centres[:, :signal] = np.random.default_rng(0).normal(0, 1, (identities, signal))
    labels = np.repeat(np.arange(identities), per_identity)
    noise = np.random.default_rng(seed + 1).normal(0, 1, (len(labels), dims))
    return centres[labels] + noise * np.r_[np.full(signal, 0.1), np.full(dims - signal, 3.0)], labels


def _eer(embeddings, labels):
    """EER of all pairs' cosine distances."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distances = 1 - unit @ unit.T
    upper = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None])[upper]
    return eer(distances[upper][same], distances[upper][~same]).value


def test_the_discriminant_finds_the_directions_that_tell_identities_apart():
    features, labels = _clustered()
    kernel, bias = lda_projection(features, labels, units=16)
    assert kernel.shape == (40, 16) and bias.shape == (16,) and kernel.dtype == np.float32
    assert not kernel[:, 11:].any()  # 12 identities: 11 directions, the other columns 0
    embedded = features @ kernel + bias
    np.testing.assert_allclose(embedded.mean(axis=0), 0, atol=1e-4)  # centred on the training mean
    centred = features - features.mean(axis=0)
    assert _eer(embedded, labels) < 0.3 * _eer(centred, labels)  # here 7% against 47%
    held_out, held_labels = _clustered(seed=1)  # new noise: the directions generalise
    assert _eer(held_out @ kernel + bias, held_labels) < 0.3 * _eer(held_out - features.mean(axis=0), held_labels)


def test_too_few_identities_for_a_discriminant_is_a_clear_error():
    features, labels = _clustered(identities=LDA_MIN_IDENTITIES - 1)
    with pytest.raises(HeadError, match=f"at least {LDA_MIN_IDENTITIES} training identities, not 9.*--head whiten"):
        lda_projection(features, labels, units=8)


def _nuisance(identities, per_identity=30, dims=20, seed=0):
    """Features of identities apart in every direction, whose own images vary 5x more along 4 of them."""
    centres = np.random.default_rng(seed).normal(0, 1, (identities, dims))
    labels = np.repeat(np.arange(identities), per_identity)
    noise = np.random.default_rng(seed + 1).normal(0, 1, (len(labels), dims))
    return centres[labels] + noise * np.r_[np.full(4, 5.0), np.full(dims - 4, 0.3)], labels


def test_whitening_discounts_the_directions_an_identitys_own_images_vary_in_from_two_identities():
    features, labels = _nuisance(identities=3)
    kernel, bias = whitening_projection(features, labels, units=16)
    assert kernel.shape == (20, 16) and bias.shape == (16,) and kernel.dtype == np.float32
    embedded = features @ kernel + bias
    np.testing.assert_allclose(embedded.mean(axis=0), 0, atol=1e-4)
    held_out, held_labels = _nuisance(identities=12, seed=1)  # identities the fit never saw
    centred = held_out - features.mean(axis=0)
    assert _eer(held_out @ kernel + bias, held_labels) < 0.7 * _eer(centred, held_labels)  # here 26% against 42%
    # more units than feature dimensions: the rest are 0
    kernel, _ = whitening_projection(features[:, :8], labels, units=16)
    assert kernel.shape == (8, 16) and kernel[:, :8].any() and not kernel[:, 8:].any()


def test_whitening_keeps_no_direction_the_training_images_do_not_span():
    features, labels = _nuisance(identities=4, per_identity=5)  # 20 images: 19 directions at most
    kernel, bias = whitening_projection(features, labels, units=32)
    assert kernel[:, :19].any() and not kernel[:, 19:].any()
    nudged, _ = whitening_projection(features + 1e-7 * np.random.default_rng(2).normal(size=features.shape),
                                     labels, units=32)
    metric, nudged_metric = kernel @ kernel.T, nudged @ nudged.T  # what distances see, whatever the axes
    np.testing.assert_allclose(nudged_metric, metric, atol=1e-3 * np.abs(metric).max())  # no noise blown up


@pytest.mark.parametrize("images, dimensions", [(30, 200), (200, 30)])
def test_principal_directions_span_what_an_svd_finds_whichever_side_is_smaller(images, dimensions):
    centred = np.random.default_rng(3).normal(size=(images, dimensions)) * np.linspace(5, 1, dimensions)
    centred -= centred.mean(axis=0)
    basis = principal_directions(centred, 10)
    _, _, rows = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(basis.T @ basis, np.eye(10), atol=1e-9)
    np.testing.assert_allclose(basis @ basis.T, rows[:10].T @ rows[:10], atol=1e-9)  # the same subspace


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_principal_directions_from_the_gram_matrix_stop_at_what_the_images_span(dtype):
    images = (np.random.default_rng(0).normal(size=(20, 40)) + 10).astype(dtype)
    centred = images - images.mean(axis=0)  # 20 centred images span 19 directions (float32: nearly)
    basis = principal_directions(centred, 32)
    assert basis.shape == (40, 19)
    np.testing.assert_allclose(basis.T @ basis, np.eye(19), atol=1e-6)
    np.testing.assert_allclose(centred @ basis @ basis.T, centred, atol=1e-5)  # nothing of the images lost


def test_whitening_needs_two_identities_whose_images_vary():
    features, labels = _clustered(identities=2)
    with pytest.raises(HeadError, match="at least 2 training identities with 2\+ images"):
        whitening_projection(features, np.zeros_like(labels), units=8)
    with pytest.raises(HeadError, match="at least 2 training identities with 2\+ images"):
        whitening_projection(features[:3], np.array([0, 0, 1]), units=8)
    with pytest.raises(HeadError, match="do not vary"):
        whitening_projection(np.repeat(features[:2], 5, axis=0), np.repeat([0, 1], 5), units=8)
    with pytest.raises(HeadError, match="all the same"):
        whitening_projection(np.ones((10, 16)), np.repeat([0, 1], 5), units=8)
    tiny, tiny_labels = _nuisance(identities=3)  # the check is scale-free: small features still whiten
    assert np.isfinite(whitening_projection(1e-6 * tiny, tiny_labels, units=8)[0]).all()


def _idiosyncratic(identities=6, per_identity=30, dims=20, seed=0):
    """Features whose identities' own images vary 5x more along 4 directions of their own:
    what the other identities' variation says of a new one's is wrong."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (identities, dims))
    scales = np.full((identities, dims), 0.3)
    for identity in range(identities):
        scales[identity, rng.choice(dims, 4, replace=False)] = 5.0
    labels = np.repeat(np.arange(identities), per_identity)
    noise = np.random.default_rng(seed + 1).normal(0, 1, (len(labels), dims))
    return centres[labels] + noise * scales[labels], labels


def test_the_whitening_shrinkage_is_the_one_that_verifies_best_on_each_identity_left_out():
    shared, shared_labels = _nuisance(identities=6)  # every identity varies along the same 4 directions
    chosen, scores = chosen_shrinkage(shared, shared_labels, units=16)
    assert chosen == 0.2 and scores[0.2] < 0.5 * scores[1.0]  # whiten hard: here 7% against 42%
    own, own_labels = _idiosyncratic()
    chosen, scores = chosen_shrinkage(own, own_labels, units=16)
    assert chosen == 1.0 and scores[1.0] == min(scores.values())  # no whitening: the principal directions alone
    assert chosen_shrinkage(own[:60], own_labels[:60], units=16) == (SHRINKAGE, {})  # 2 identities: none to leave out
    # deterministic: the same comparisons, the same scores
    assert chosen_shrinkage(own, own_labels, units=16)[1] == scores


def test_a_fitted_whitening_head_uses_the_shrinkage_chosen_on_the_towers_features():
    tower = build_tower("pixel-gradients", (28, 28, 1), 16, 0.0)
    images = np.concatenate([np.random.default_rng(i).random((10, 28, 28, 1)) * (0.3 + 0.1 * i)
                             for i in range(4)]).astype(np.float32)
    labels = np.repeat(np.arange(4), 10)
    used = fit_head(tower, images, labels, "whiten")
    features = keras.Model(tower.input, head_layer(tower).input).predict(images, verbose=0)
    assert used["embedding"] == chosen_shrinkage(features, labels, units=16)[0] != SHRINKAGE  # here 0.2: not the constant
    kernel, bias = whitening_projection(features, labels, units=16, shrinkage=used["embedding"])
    np.testing.assert_allclose(head_layer(tower).get_weights()[0], kernel, atol=1e-6)
    np.testing.assert_allclose(head_layer(tower).get_weights()[1], bias, atol=1e-6)
    assert fit_head(tower, images, np.repeat(np.arange(10), 4), "lda") == {"embedding": SHRINKAGE}  # LDA: its constant


def test_the_closed_form_head_is_lda_from_enough_identities_and_whitening_below():
    assert [fitted_head(n) for n in (2, LDA_MIN_IDENTITIES - 1, LDA_MIN_IDENTITIES)] == ["whiten", "whiten", "lda"]
    assert default_head("imagenet-mobilenetv2", 3) == "whiten" and default_head("small", 30) is None
    assert default_tower("small-colour") == "imagenet-mobilenetv2+patches"
    assert default_tower("small-grey") == "pixel-gradients+patches"
    assert [default_head("pixel-gradients", n) for n in (7, LDA_MIN_IDENTITIES)] == ["whiten", "lda"]
    assert TrainConfig(tower="pixel-gradients").epochs == 0
    # the loss never meets a fitted head: its size is the same for every loss
    assert {TrainConfig(tower="imagenet-mobilenetv2", head="whiten", loss=loss).embedding_size
            for loss in ("triplet", "contrastive", "cosface")} == {128}


def test_the_head_is_fitted_in_the_towers_embedding_layer_and_nothing_else_changes():
    tower = build_tower("small", (28, 28, 1), 16, 0.3)
    rng = np.random.default_rng(0)
    images = rng.random((60, 28, 28, 1)).astype(np.float32)
    labels = np.repeat(np.arange(12), 5)
    before = {w.path: w.numpy().copy() for w in tower.weights}
    fit_head(tower, images, labels, "lda")
    changed = {path for path, value in before.items()
               if not np.array_equal(value, next(w for w in tower.weights if w.path == path).numpy())}
    assert changed == {w.path for w in head_layer(tower).weights}
    embeddings = tower.predict(images, verbose=0)
    assert np.isfinite(embeddings).all() and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)


def test_the_pixel_gradient_tower_reads_pixels_and_a_4x4_grid_of_gradient_cells_of_unit_length_each():
    tower = build_tower("pixel-gradients", (28, 28, 1), 16, 0.0)
    rng = np.random.default_rng(0)
    images = rng.random((30, 28, 28, 1)).astype(np.float32)
    features = keras.Model(tower.input, head_layer(tower).input).predict(images, verbose=0)
    assert features.shape == (30, 28 * 28 + 4 * 4 * 16)  # 7 px cells, 8 orientations of both signs
    pixels, cells = features[:, :28 * 28], features[:, 28 * 28:]
    assert np.allclose(np.linalg.norm(pixels, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(cells, axis=1), 1, atol=1e-5)
    assert np.allclose(pixels, images.reshape(30, -1) / np.linalg.norm(images.reshape(30, -1), axis=1,
                                                                      keepdims=True), atol=1e-5)
    blank = tower.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0)  # no NaN from an empty image
    assert np.isfinite(blank).all()


def test_the_pixel_gradient_grid_follows_the_aspect_and_the_tower_refuses_photos():
    wide = build_tower("pixel-gradients", (32, 64, 1), 8, 0.0)
    assert head_layer(wide).input.shape[-1] == 32 * 64 + 4 * 4 * 16  # 8 x 16 px cells
    with pytest.raises(ValueError, match="for thumbnails"):
        build_tower("pixel-gradients", (160, 160, 3), 8, 0.0)


def test_a_tower_without_an_embedding_layer_has_no_lda_head():
    inputs = keras.Input((4,))
    tower = keras.Model(inputs, keras.layers.Dense(2, name="projection")(inputs), name="other")
    with pytest.raises(HeadError, match="no Dense `embedding` layer"):
        head_layer(tower)


def test_the_generic_tower_defaults_to_the_lda_head_and_no_epochs():
    config = TrainConfig(tower="imagenet-mobilenetv2")
    assert (config.head, config.epochs) == ("lda", 0)
    learnt = TrainConfig(tower="imagenet-mobilenetv2", head="learnt")
    assert (learnt.head, learnt.epochs, learnt.learning_rate) == ("learnt", 6, 3e-3)
    assert TrainConfig().head == "learnt" and TrainConfig(head="lda", epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="unknown head 'pca'"):
        TrainConfig(head="pca")


def test_training_with_an_lda_head_and_too_few_identities_stops_with_the_reason():
    profile = get_profile("small-grey")
    images = np.random.default_rng(0).random((20, 28, 28, 1)).astype(np.float32)
    with pytest.raises(TrainingError, match="LDA head needs at least"):
        train(TrainConfig(head="lda"), images, np.repeat(np.arange(4), 5), profile, verbose=False)


@pytest.fixture
def products(tmp_path, monkeypatch):
    """A folder of 12 products, 4 colour photos each (a colour and a shape per product), and
    the generic tower's weights replaced by random ones under the package's names."""
    monkeypatch.setattr(im, "fetch", lambda: (None, None))
    monkeypatch.setattr(im, "read_weights", lambda *_: _weights_like((160, 160, 3)))
    rng = np.random.default_rng(0)
    root = tmp_path / "products"
    for item in range(12):
        colour = rng.integers(0, 256, 3).tolist()
        folder = root / f"item{item:02d}"
        folder.mkdir(parents=True)
        for shot in range(4):
            image = np.full((64, 64, 3), 255, np.uint8)
            centre = tuple(int(v) for v in rng.integers(24, 40, 2))
            cv2.circle(image, centre, 8 + item, colour, -1)
            cv2.imwrite(str(folder / f"{shot}.png"), image)
    return root


def test_the_cli_fits_an_lda_head_for_products_and_refits_it_on_every_training_identity(products, tmp_path,
                                                                                       capsys):
    out = tmp_path / "bundle"
    assert main(["--data", str(products), "--profile", "product", "--holdout-identities", "0",
                 "--validation-identities", "2", "--loss", "triplet", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("imagenet-mobilenetv2: 10 training identities with 2+ images: an LDA head, fitted in closed form "
            "(--loss triplet trains only with --epochs N or --head learnt)") in printed
    assert "refit: training again on all 12 training and validation identities, fitting the lda head" in printed
    assert "(the head fitted by LDA, shrinkage 0.4, no epochs: validation EER " in printed
    bundle = load_bundle(out)  # safe mode: the square-rooted histogram is a registered layer
    recipe = bundle.meta["recipe"]
    assert (recipe["hyperparameters"]["head"], recipe["epochs"], len(recipe["refit"]["identities"])) == ("lda", 0, 12)
    assert recipe["best_validation_eer"] is not None


def test_with_fewer_identities_the_cli_fits_a_whitening_head_instead(products, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["--data", str(products), "--profile", "product", "--holdout-identities", "4",
                 "--validation-identities", "2", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (f"6 training identities with 2+ images: fewer than {LDA_MIN_IDENTITIES} for an LDA head: a whitening "
            "head, fitted in closed form") in printed
    assert "(the head fitted by whitening, shrinkage " in printed
    recipe = load_bundle(out).meta["recipe"]
    assert (recipe["hyperparameters"]["head"], recipe["epochs"], len(recipe["refit"]["identities"])) == ("whiten", 0, 8)


def test_a_learnt_head_is_still_there_for_the_asking(products, tmp_path):
    out = tmp_path / "bundle"
    assert main(["--data", str(products), "--profile", "product", "--holdout-identities", "4", "--head", "learnt",
                 "--validation-identities", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-p", "3",
                 "--batch-k", "2", "--quiet", "--no-refit", "--out", str(out)]) == 0
    assert load_bundle(out).meta["recipe"]["hyperparameters"]["head"] == "learnt"


def test_thumbnails_with_few_images_get_a_whitening_head_that_serves_through_tflite(products, tmp_path, capsys):
    """Three products keep only 2 photos (fewer than --batch-k's 4): a fitted head draws no
    batches, so they are trained on and refit on; the 32 px bundle upsamples inside the model."""
    from verifier.core import fastpath
    from verifier.core.scorer import Scorer

    for item in ("item00", "item01", "item11"):
        for shot in (2, 3):
            (products / item / f"{shot}.png").unlink()
    rng = np.random.default_rng(1)
    for path in products.glob("*/*.png"):  # shots that differ at thumbnail size too: speckle
        image = cv2.imread(str(path)).astype(np.int16) + rng.integers(-60, 61, (64, 64, 3))
        cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
    out = tmp_path / "bundle"
    assert main(["--data", str(products), "--profile", "small-colour", "--holdout-identities", "2",
                 "--validation-identities", "2", "--loss", "triplet", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 training identities with 2+ images: fewer than 10 for an LDA head: a whitening head" in printed
    assert "left out" not in printed
    recipe = load_bundle(out).meta["recipe"]
    assert (recipe["hyperparameters"]["head"], recipe["hyperparameters"]["embedding_size"]) == ("whiten", 256)
    assert len(recipe["refit"]["identities"]) == 10
    scorer = Scorer.from_bundle(out, backend="tflite", write_export=False)
    assert scorer.embedder.name.startswith("tflite") and scorer.agreement <= fastpath.TOLERANCE
