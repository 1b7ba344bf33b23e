"""`python -m training` end to end on small synthetic images, resume, and its error paths."""

import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from calibration.pairs import pair_comparisons
from imagesets import load_folder
from tests.synthetic import identity_images, write_folder
from training.cli import main
from training.heads import WHITENING_SHRINKAGES
from training.towers import build_tower
from training.trainer import Checkpoint, TrainConfig, train
from verifier.core.bundle import load_bundle
from verifier.core.embedder import Embedder
from verifier.core.profiles import get_profile, preprocess_batch

FAST = ["--steps-per-epoch", "10", "--batch-p", "4", "--batch-k", "3", "--quiet", "--profile", "face-small"]
RECIPE_KEYS = {"loss", "mining", "margin", "epochs", "steps", "seed", "tower", "embedding_size", "dataset",
               "train_identities", "validation_identities", "holdout_identities", "best_validation_eer",
               "training_seconds"}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("train") / "faces", n_identities=8, per_identity=6)


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "bundle"
    rc = main(["--data", str(faces), "--holdout-identities", "0", "--validation-identities", "2",
               "--loss", "triplet", "--seed", "0", "--epochs", "2", "--out", str(out)] + FAST)
    assert rc == 0
    return out


def test_training_writes_a_loadable_bundle_with_the_recipe(trained, faces):
    bundle = load_bundle(trained)
    recipe = bundle.meta["recipe"]
    assert RECIPE_KEYS <= set(recipe)
    assert recipe["loss"] == "triplet" and recipe["mining"] == "batch-all"
    assert recipe["dataset"]["spec"] == str(faces) and recipe["holdout_identities"] == []
    assert len(recipe["train_identities"]) == 6 and len(recipe["validation_identities"]) == 2
    assert not set(recipe["train_identities"]) & set(recipe["validation_identities"])
    assert recipe["epochs"] == 2 and recipe["steps"] == 20 and recipe["best_validation_eer"] is not None
    assert bundle.meta["embedding_size"] == recipe["embedding_size"] == 64


def test_embeddings_separate_the_identities(trained, faces):
    bundle = load_bundle(trained)
    data = load_folder(faces)
    emb = Embedder.from_bundle(bundle).embed_images(data.images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    pairs = pair_comparisons(emb, data.labels, data.forged, bundle.metric)
    assert pairs.genuine.mean() < pairs.impostor.mean()


def _first_kernel(checkpoint_dir):
    with np.load(checkpoint_dir / "best.npz") as saved:
        return saved["arr_0"]


def test_validation_chooses_the_epochs_then_the_model_is_refit_on_every_training_identity(trained):
    bundle = load_bundle(trained)
    recipe = bundle.meta["recipe"]
    refit = recipe["refit"]
    assert sorted(refit["identities"]) == sorted(recipe["train_identities"] + recipe["validation_identities"])
    assert refit["epochs"] == recipe["best_epoch"] and refit["steps"] == 10 * recipe["best_epoch"]
    refit_dir = trained / "checkpoint" / f"refit-{recipe['best_epoch']}"
    state = json.loads((refit_dir / "state.json").read_text())
    assert state["epoch"] == recipe["best_epoch"] and state["best_eer"] is None  # no validation in the refit
    assert state["signature"]["config"]["loss"] == recipe["loss"]
    # the bundle holds the refit tower, not the early-stopped one
    shipped = bundle.model.get_weights()
    assert any(np.array_equal(w, _first_kernel(refit_dir)) for w in shipped)
    assert not any(np.array_equal(w, _first_kernel(trained / "checkpoint")) for w in shipped)


def test_no_refit_keeps_the_early_stopped_model(faces, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["--data", str(faces), "--holdout-identities", "0", "--validation-identities", "2",
                 "--epochs", "1", "--no-refit", "--out", str(out)] + FAST) == 0
    assert "refit:" not in capsys.readouterr().out
    assert load_bundle(out).meta["recipe"]["refit"] is None
    assert not list((out / "checkpoint").glob("refit*"))


@pytest.mark.parametrize("loss", ["contrastive", "npair", "cosface"])
def test_other_losses_train(loss, faces, tmp_path):
    out = tmp_path / "b"
    assert main(["--data", str(faces), "--holdout-identities", "2", "--loss", loss, "--epochs", "1",
                 "--out", str(out), "--steps-per-epoch", "4", "--batch-p", "4", "--batch-k", "2", "--quiet",
                 "--profile", "face-small"]) == 0
    recipe = load_bundle(out).meta["recipe"]
    assert recipe["loss"] == loss and recipe["mining"] is None and len(recipe["holdout_identities"]) == 2


def test_resume_continues_from_the_checkpoint(faces, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["--data", str(faces), "--holdout-identities", "0", "--seed", "1", "--out", str(out)] + FAST
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    recipe = load_bundle(out).meta["recipe"]
    assert recipe["epochs"] == 2 and [h["epoch"] for h in recipe["history"]] == [1, 2]
    assert main(args[:-len(FAST)] + FAST + ["--epochs", "2", "--resume", "--margin", "0.5"]) == 2
    assert "other data or settings" in capsys.readouterr().err


def test_checkpoint_restores_cosface_proxies_with_the_tower_and_optimizer(tmp_path):
    """cosface's class proxies live outside the tower; a resumed run must get them back."""
    profile = get_profile("face-small")
    tower = build_tower("small", profile.input_shape, 8)
    proxies = tf.Variable(np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32))
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(tower.trainable_variables + [proxies])
    Checkpoint(tmp_path).save(tower, optimizer, tower.get_weights(), {"epoch": 1}, [proxies])

    fresh_tower = build_tower("small", profile.input_shape, 8)
    fresh = tf.Variable(tf.zeros((8, 5)))
    state, _ = Checkpoint(tmp_path).load(fresh_tower, keras.optimizers.AdamW(1e-3), [fresh])
    assert state == {"epoch": 1}
    np.testing.assert_array_equal(fresh.numpy(), proxies.numpy())
    for a, b in zip(fresh_tower.get_weights(), tower.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cosface_run_checkpoints_its_proxies_and_resumes_from_them(faces, tmp_path, capsys):
    args = ["--data", str(faces), "--holdout-identities", "0", "--validation-identities", "0",
            "--loss", "cosface", "--out", str(tmp_path)] + FAST
    assert main(args + ["--epochs", "1"]) == 0
    with np.load(tmp_path / "checkpoint" / "extra.npz") as saved:
        assert [saved[name].shape for name in saved.files] == [(128, 8)]  # one proxy per training identity
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert load_bundle(tmp_path).meta["recipe"]["loss"] == "cosface"

    (tmp_path / "checkpoint" / "extra.npz").unlink()  # a resume without its proxies is refused, not re-drawn
    assert main(args + ["--epochs", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is unusable" in err and "Traceback" not in err


def test_non_positive_cosface_scale_is_refused(faces, tmp_path, capsys):
    _fails(["--data", str(faces), "--loss", "cosface", "--scale", "0", "--out", str(tmp_path)], capsys,
           "--scale must be positive")


def test_mining_for_a_loss_that_mines_nothing_is_refused(faces, tmp_path, capsys):
    _fails(["--data", str(faces), "--loss", "cosface", "--mining", "batch-hard", "--out", str(tmp_path)], capsys,
           "applies to the triplet loss only")


def _fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_missing_path(tmp_path, capsys):
    _fails(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capsys, "not found")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys, "no identity folders")


def test_one_identity(tmp_path, capsys):
    root = write_folder(tmp_path / "one", n_identities=1, per_identity=5)
    _fails(["--data", str(root), "--out", str(tmp_path / "o")], capsys, "only one identity")


def test_too_few_images_per_identity(tmp_path, capsys):
    root = write_folder(tmp_path / "few", n_identities=6, per_identity=3)
    _fails(["--data", str(root), "--holdout-identities", "0", "--batch-k", "4", "--profile", "face-small",
            "--out", str(tmp_path / "o")],
           capsys, "fewer than --batch-k 4 images")


def test_too_few_identities_after_holdout(tmp_path, capsys):
    root = write_folder(tmp_path / "small", n_identities=4, per_identity=4)
    _fails(["--data", str(root), "--holdout-identities", "3", "--out", str(tmp_path / "o")],
           capsys, "too few identities left to train on")


def test_unreadable_file_strict_fails_and_lenient_warns(tmp_path, capsys):
    root = write_folder(tmp_path / "bad", n_identities=6, per_identity=4)
    (root / "id00" / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "o"
    _fails(["--data", str(root), "--strict", "--out", str(out)], capsys, "unreadable image")
    assert main(["--data", str(root), "--holdout-identities", "0", "--validation-identities", "0",
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-p", "3", "--batch-k", "2",
                 "--quiet", "--profile", "face-small", "--out", str(out)]) == 0
    assert "skipped 1 unreadable files" in capsys.readouterr().err


def test_signature_layout_trains_without_flips(tmp_path):
    root = tmp_path / "sig"
    rng = np.random.default_rng(0)
    for w in range(4):
        for kind, count in (("genuine", 4), ("forged", 2)):
            (root / f"w{w}" / kind).mkdir(parents=True)
            for i in range(count):
                image = np.full((60, 150), 255, np.uint8)
                pts = (rng.random((6, 2)) * [140, 50] + [5, 5]).astype(np.int32)
                cv2.polylines(image, [pts], False, 0, 2)
                cv2.imwrite(str(root / f"w{w}" / kind / f"{i}.png"), image)
    out = tmp_path / "b"
    assert main(["--data", str(root), "--holdout-identities", "0", "--validation-identities", "0", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-p", "4", "--batch-k", "2", "--quiet", "--out", str(out)]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["profile"]["name"] == "signature" and meta["recipe"]["flip_tta"] is False


def test_same_seed_gives_the_same_weights():
    profile = get_profile("face-small")
    images = identity_images(5, 4)
    x = preprocess_batch([image for group in images.values() for image in group], profile)
    y = np.repeat(np.arange(5), 4)
    config = TrainConfig(epochs=1, steps_per_epoch=3, batch_p=3, batch_k=2)
    first, second = (train(config, x, y, profile, verbose=False).model(x[:3]).numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_each_loss_gets_its_own_measured_defaults_unless_told():
    cosface, triplet = TrainConfig(), TrainConfig(loss="triplet")
    assert (cosface.loss, cosface.augment, cosface.epochs, cosface.margin, cosface.mining,
            cosface.embedding_size, cosface.scale) == ("cosface", "robust", 20, 0.35, None, 128, 30.0)
    assert (triplet.augment, triplet.epochs, triplet.margin, triplet.mining, triplet.embedding_size) == (
        "none", 10, 0.2, "batch-all", 64)
    told = TrainConfig(loss="triplet", augment="robust", epochs=3, margin=0.5, embedding_size=32)
    assert (told.augment, told.epochs, told.margin, told.embedding_size) == ("robust", 3, 0.5, 32)


def test_the_end_of_training_compares_the_recipe_with_the_baselines():
    from training.cli import compared_with_baselines

    ahead = {"best_validation_eer": 0.1, "validation_baselines": {"raw-pixels": 0.3, "pca": 0.25}}
    assert compared_with_baselines(ahead) == \
        "validation identities: this recipe 10.00% EER against raw pixels 30.00%, PCA 25.00%"
    behind = {"best_validation_eer": 0.35, "validation_baselines": {"raw-pixels": 0.285, "pca": 0.26,
                                                                     "colour-hist": 0.3}}
    assert compared_with_baselines(behind).splitlines()[1].startswith(
        "warning: on its own validation identities this recipe is no better than PCA")
    assert compared_with_baselines({"best_validation_eer": None, "validation_baselines": {}}) is None


def test_with_no_profile_the_cli_prints_the_one_it_chose_and_records_why(faces, tmp_path, capsys):
    out = tmp_path / "b"
    fast = [a for a in FAST if a not in ("--profile", "face-small")]
    assert main(["--data", str(faces), "--holdout-identities", "0", "--validation-identities", "2",
                 "--out", str(out)] + fast) == 0
    printed = capsys.readouterr().out
    reason = "greyscale images, median short side 46 px: thumbnails, resized to 28x28 (small-grey)"
    assert f"profile: small-grey ({reason})" in printed
    bundle = load_bundle(out)
    assert bundle.profile.name == "small-grey" and bundle.meta["recipe"]["profile_reason"] == reason
    # the grey-thumbnail default: fixed features beside patch features, each under a whitening head
    # (6 training identities), no epochs
    recipe = bundle.meta["recipe"]
    assert (recipe["tower"], recipe["hyperparameters"]["head"], recipe["epochs"]) == (
        "pixel-gradients+patches", "whiten", 0)
    shrinkages = recipe["head_shrinkage"]
    assert (f"the head fitted by whitening, shrinkage embedding {shrinkages['embedding']:g}, "
            f"patch_embedding {shrinkages['patch_embedding']:g}, no epochs") in printed
    assert set(shrinkages.values()) <= set(WHITENING_SHRINKAGES)
    from verifier.core import fastpath
    from verifier.core.scorer import Scorer

    scorer = Scorer.from_bundle(out, backend="tflite", write_export=False)  # patch codes served through TFLite
    assert scorer.embedder.name.startswith("tflite") and scorer.agreement <= fastpath.TOLERANCE
