"""`training.bundles`: the library under `python -m training` and bench/accuracy.py, called directly."""

import contextlib
import io
import json

import numpy as np
import pytest

from imagesets import load_folder
from tests.synthetic import write_folder
from training.bundles import default_split, fit_tower, train_bundle
from training.cli import main
from training.trainer import TrainConfig
from verifier.core.bundle import load_bundle
from verifier.core.errors import DatasetError
from verifier.core.profiles import get_profile

CONFIG = TrainConfig(loss="triplet", epochs=2, steps_per_epoch=5, batch_p=4, batch_k=3, seed=0)
CLI_SETTINGS = ["--loss", "triplet", "--epochs", "2", "--steps-per-epoch", "5", "--batch-p", "4", "--batch-k", "3",
                "--seed", "0", "--profile", "face-small", "--quiet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("lib") / "faces", n_identities=8, per_identity=6)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    messages = []
    data = load_folder(folder)
    split = default_split(data.identities, 0, 2, 0)
    out = tmp_path_factory.mktemp("lib") / "bundle"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = train_bundle(data, CONFIG, split, out, profile=get_profile("face-small"), spec=str(folder),
                              verbose=False, log=messages.append)
    return result, split, messages, printed.getvalue()


def test_train_bundle_writes_the_bundle_it_describes(trained, folder):
    result, split, _, _ = trained
    bundle = load_bundle(result.path)
    assert bundle.bundle_id == result.bundle_id
    assert json.loads(json.dumps(result.recipe)) == bundle.meta["recipe"]
    assert result.recipe["dataset"]["spec"] == str(folder)
    assert result.recipe["train_identities"] == split.train
    assert result.recipe["validation_identities"] == split.validation
    assert result.fitted.refit_identities == split.train + split.validation
    assert result.recipe["refit"]["identities"] == split.train + split.validation
    assert result.fitted.final is not result.fitted.training


def test_train_bundle_reports_progress_through_log_only(trained, folder):
    _, _, messages, printed = trained
    assert messages[0].startswith(f"{folder}: 8 identities, 48 images; training on 6, validating on 2, holding out 0")
    assert messages[1].startswith("refit: training again on all 8 training and validation identities")
    assert len(messages) == 2 and printed == ""


def test_the_cli_is_train_bundle_with_its_arguments(trained, folder, tmp_path, capsys):
    result, _, _, _ = trained
    out = tmp_path / "cli"
    assert main(["--data", str(folder), "--holdout-identities", "0", "--validation-identities", "2",
                 "--out", str(out)] + CLI_SETTINGS) == 0
    printed = capsys.readouterr().out
    assert f"wrote bundle {load_bundle(out).bundle_id} to {out}" in printed
    assert "validation identities: this recipe" in printed and "raw pixels" in printed
    assert set(result.recipe["validation_baselines"]) == {"raw-pixels", "pca"}  # grey: no colour histogram
    cli = load_bundle(out)
    for a, b in zip(cli.model.get_weights(), load_bundle(result.path).model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    assert cli.meta["recipe"]["profile_reason"] == "given with --profile"
    assert result.recipe["profile_reason"].startswith("greyscale images")  # the data's own choice

    def timeless(recipe):
        drop = {"training_seconds", "profile_reason"}
        refit = recipe["refit"] and {k: v for k, v in recipe["refit"].items() if k not in drop}
        return {**{k: v for k, v in recipe.items() if k not in drop}, "refit": refit}

    assert timeless(cli.meta["recipe"]) == timeless(json.loads(json.dumps(result.recipe)))


def test_fit_tower_without_refit_ships_the_early_stopped_model(folder):
    data = load_folder(folder)
    split = default_split(data.identities, 2, 2, 1)
    config = TrainConfig(loss="triplet", epochs=1, steps_per_epoch=2, batch_p=3, batch_k=2, seed=1)
    fitted = fit_tower(config, data, split, get_profile("face-small"), validation=data.subset(split.validation),
                       refit_after=False, verbose=False)
    assert fitted.final is fitted.training and fitted.refit_identities is None
    assert fitted.training.best_validation_eer is not None
    assert fitted.seconds == fitted.training.training_seconds


def test_default_split_applies_the_cli_defaults():
    names = [f"p{k:02d}" for k in range(40)]
    split = default_split(names, None, None, 0)
    assert (len(split.holdout), len(split.validation), len(split.train)) == (10, 3, 27)  # a quarter; a tenth of 30
    held = names[:10]
    assert default_split(names, held, 0, 0).holdout == held and default_split(names, held, 0, 0).validation == []
    with pytest.raises(DatasetError, match="too few identities left to train on"):
        default_split(names[:4], 3, None, 0)


def test_forgeries_train_as_classes_of_their_own_or_not_at_all():
    from training.bundles import training_images
    from imagesets import LabelledImages

    data = LabelledImages(name="sig", images=[np.zeros((4, 4, 1), np.uint8)] * 6,
                          labels=np.array([0, 0, 0, 1, 1, 0]), identities=["w0", "w1"],
                          forged=np.array([0, 0, 0, 0, 0, 1], bool), fingerprint="x", profile="signature")
    images, labels = training_images(data, forgery_classes=True)
    assert len(images) == 6 and len(set(labels.tolist())) == 3  # w0, w1 and w0's forgeries
    assert labels[5] != labels[0] and labels[5] != labels[3]
    images, labels = training_images(data, forgery_classes=False)
    assert len(images) == 5 and set(labels.tolist()) == {0, 1}


def test_the_ink_tower_embeds_any_signature_layout_to_a_unit_vector():
    from training.towers import build_tower

    tower = build_tower("ink", (64, 160, 1), 16)
    out = tower.predict(np.random.default_rng(0).random((2, 64, 160, 1)).astype(np.float32), verbose=0)
    assert out.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_the_gradient_tower_has_a_fixed_front_end_and_embeds_a_blank_page(tmp_path):
    from training.towers import build_tower
    from verifier.core import fastpath
    from verifier.core.bundle import load_bundle, save_bundle

    profile = get_profile("signature")
    tower = build_tower("gradients", profile.input_shape, 16)
    front = tower.get_layer("oriented_gradients")
    assert not front.trainable and front.weights[0].shape == (3, 3, 1, 16)
    assert front.weights[0].path not in {w.path for w in tower.trainable_weights}
    save_bundle(tmp_path / "b", tower, profile=profile, metric="euclidean", recipe={})
    bundle = load_bundle(tmp_path / "b")  # the project's layer loads in safe mode
    data, record = fastpath.build_export(bundle)
    assert record["max_abs_diff"] <= fastpath.TOLERANCE  # the blank probe included: no NaN in TFLite


def _with_counts(counts):
    """LabelledImages with the given number of (blank) images per identity name."""
    from imagesets import LabelledImages

    names = list(counts)
    labels = np.repeat(np.arange(len(names)), [counts[n] for n in names])
    return LabelledImages("c", [np.zeros((4, 4), np.uint8)] * len(labels), labels, names,
                          np.zeros(len(labels), bool), "f", "face-small")


def test_usable_split_leaves_out_who_cannot_make_a_batch_and_says_so():
    from training.bundles import usable_split
    from training.splits import Split

    data = _with_counts({"a": 3, "b": 2, "c": 1, "d": 1, "v1": 2, "v2": 1})
    lines = []
    split = usable_split(data, Split(["a", "b", "c", "d"], ["v1", "v2"], []), 2, lines.append)
    assert split.train == ["a", "b"] and split.validation == []  # v1 alone has no impostor pair
    assert lines == ["left out: 2 training identities with fewer than --batch-k 2 images, "
                     "2 validation identities (one image each, or one identity left)"]
    with pytest.raises(DatasetError, match="3 identities have fewer than --batch-k 3 images: b \\(2\\), c \\(1\\), "
                                           "d \\(1\\); 1 left to train on, at least 2 needed"):
        usable_split(data, Split(["a", "b", "c", "d"], [], []), 3)
    # a fitted head draws no batches: two images an identity suffice, whatever --batch-k says
    lines = []
    split = usable_split(data, Split(["a", "b", "c", "d"], [], []), 4, lines.append, batches=False)
    assert split.train == ["a", "b"] and lines == ["left out: 2 training identities with fewer than 2 images"]


def test_paired_identities_counts_the_named_identities_with_a_genuine_pair():
    from training.bundles import paired_identities

    data = _with_counts({"a": 3, "b": 2, "c": 1, "d": 1, "v1": 2, "v2": 1})
    assert paired_identities(data, ["a", "b", "c", "d"]) == 2  # the training side only: v1 is not named
    assert paired_identities(data, ["c", "d"]) == 0


def test_a_pretrained_tower_is_fine_tuned_by_default_only_with_many_training_people():
    from training.trainer import FINE_TUNE, FINE_TUNE_MIN_IDENTITIES, pretrained_defaults

    assert pretrained_defaults(FINE_TUNE_MIN_IDENTITIES - 1) == {"epochs": 0}
    assert pretrained_defaults(FINE_TUNE_MIN_IDENTITIES) == FINE_TUNE and FINE_TUNE["epochs"] > 0
