"""bench/accuracy.py's signature protocol, fold layout and sampling; the classical baselines (training/baselines.py)."""

import json

import numpy as np
import pytest

from bench import accuracy
from bench.accuracy import evaluate, fold_layout, held_out, sample_per_class
from training.baselines import ALIASES, BASELINES, UNIFORM_LBP, colour_histogram, hog, lbp
from imagesets import LabelledImages
from tests.synthetic import write_folder


def test_signatures_report_skilled_and_random_forgeries_apart():
    # writer 0: genuine at 0.0 and 0.1, a skilled forgery at 0.15 (close); writer 1: genuine at 5.0 and 5.1
    embeddings = np.array([[0.0], [0.1], [0.15], [5.0], [5.1]])
    labels = np.array([0, 0, 0, 1, 1])
    forged = np.array([0, 0, 1, 0, 0], bool)
    scores = evaluate(embeddings, labels, forged, "euclidean")
    assert set(scores) == {"skilled", "random"}
    assert scores["random"].result.value == 0.0 and scores["random"].auc == 1.0
    assert scores["skilled"].point.fmr.total == 2  # the forgery against each of writer 0's genuine images
    assert scores["random"].point.fmr.total == 4  # 2 x 2 genuine images of different writers
    assert scores["skilled"].result.value > 0  # 0.15 and 0.05 away: inside the genuine spread of 0.1
    plain = evaluate(embeddings[[0, 1, 3, 4]], labels[[0, 1, 3, 4]], np.zeros(4, bool), "euclidean")
    assert set(plain) == {"all"}


def test_uniform_lbp_has_58_uniform_codes_and_one_for_the_rest():
    assert (UNIFORM_LBP < 58).sum() == 58 and set(UNIFORM_LBP.tolist()) == set(range(59))


def test_hog_and_lbp_ignore_brightness_and_hog_sees_orientation():
    rng = np.random.default_rng(0)
    horizontal = np.zeros((1, 64, 160, 1), np.float32)
    horizontal[0, 30:33, 10:150] = 1.0
    vertical = np.zeros_like(horizontal)
    vertical[0, 5:60, 78:81] = 1.0
    for features in (hog, lbp):
        h, h_dim, _ = features(None, None, np.concatenate([horizontal, 0.5 * horizontal, vertical]))
        assert np.allclose(h, h_dim, atol=1e-6)  # a fainter pen: the same features
    h, v = hog(None, None, np.concatenate([horizontal, vertical]))
    assert h @ v / np.linalg.norm(h) / np.linalg.norm(v) < 0.5  # another stroke direction: other features
    noise = rng.random((3, 64, 160, 1)).astype(np.float32)
    assert hog(None, None, noise).shape == (3, 7 * 19 * 36) and lbp(None, None, noise).shape == (3, 32 * 59)
    assert {"hog", "lbp", "raw-pixels"} <= set(BASELINES)


def test_colour_histogram_tells_red_from_blue_in_any_normalisation():
    rng = np.random.default_rng(0)
    red = np.clip(rng.normal(0.1, 0.05, (4, 16, 16, 3)) + [0.7, 0, 0], 0, 1)
    blue = np.clip(rng.normal(0.1, 0.05, (4, 16, 16, 3)) + [0, 0, 0.7], 0, 1)
    unit = np.concatenate([red, blue]).astype(np.float32)
    standardised = (unit - unit.mean(axis=(1, 2, 3), keepdims=True)) / unit.std(axis=(1, 2, 3), keepdims=True)
    labels = np.repeat([0, 1], 4)
    for images in (unit, 255 * unit, standardised):  # the profiles' "unit", "none" and "standardize"
        features = BASELINES["colour-hist"](None, None, images)
        assert features.shape == (8, 512) and np.allclose((features ** 2).sum(axis=1), 1)  # sqrt of an L1 histogram
        score = evaluate(features, labels, np.zeros(8, bool), "cosine")["all"]
        assert score.result.value == 0.0 and score.auc == 1.0
        assert (score.point.fnmr.total, score.point.fmr.total) == (12, 16)
    grey = colour_histogram(None, None, unit[:, :, :, :1])  # one channel: a grey-level histogram
    assert grey.shape == (8, 32) and np.allclose(grey.sum(axis=1) > 0, True)


def test_pca_is_the_eigenfaces_row_under_its_general_name():
    assert ALIASES["pca"] in BASELINES and "pca" not in BASELINES


def _labelled(counts, forged=None):
    labels = np.repeat(np.arange(len(counts)), counts)
    return LabelledImages(name="t", images=[np.full((2, 2), i, np.uint8) for i in range(len(labels))],
                          labels=labels, identities=[f"c{i}" for i in range(len(counts))],
                          forged=np.zeros(len(labels), bool) if forged is None else forged,
                          fingerprint="x", profile="product")


def test_per_class_sampling_is_exact_and_seeded():
    data = _labelled([5, 2, 8])
    sampled = sample_per_class(data, 3, seed=0)
    assert np.bincount(sampled.labels).tolist() == [3, 2, 3] and len(sampled.images) == 8
    rows = [int(image[0, 0]) for image in sampled.images]  # each image carries its row in `data`
    assert rows == sorted(rows) and sampled.labels.tolist() == data.labels[rows].tolist()  # order and labels kept
    assert rows == [int(image[0, 0]) for image in sample_per_class(data, 3, seed=0).images]
    assert rows != [int(image[0, 0]) for image in sample_per_class(data, 3, seed=1).images]
    assert sample_per_class(data, 8, seed=0) is data and sample_per_class(data, 0, seed=0) is data


def test_impostor_sampling_is_exact_and_seeded_and_keeps_every_genuine_pair():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)  # 4 x 45 = 180 genuine pairs, 6 x 100 = 600 impostor pairs
    embeddings = rng.normal(size=(40, 3)) + labels[:, None]
    forged = np.zeros(40, bool)
    full = evaluate(embeddings, labels, forged, "euclidean")["all"]
    assert (full.point.fnmr.total, full.point.fmr.total, full.available) == (180, 600, 600)
    sampled = evaluate(embeddings, labels, forged, "euclidean", max_impostors=100, seed=3)["all"]
    assert (sampled.point.fnmr.total, sampled.point.fmr.total, sampled.available) == (180, 100, 600)
    again = evaluate(embeddings, labels, forged, "euclidean", max_impostors=100, seed=3)["all"]
    other = evaluate(embeddings, labels, forged, "euclidean", max_impostors=100, seed=4)["all"]
    assert again.result == sampled.result and other.auc != sampled.auc


def test_fold_layouts_keep_orl_and_signatures_and_fit_ten_classes():
    assert fold_layout(40, "face")[:2] == (4, 10)  # ORL: every person held out once
    assert fold_layout(64, "signature")[:2] == (4, 16)
    assert fold_layout(82, "product")[:2] == (4, 10)
    folds, per_fold, why = fold_layout(10, "product")  # Fashion-MNIST, CIFAR-10
    assert (folds, per_fold) == (3, 3) and "fewer than 20" in why
    held = [held_out(list(range(10)), f, per_fold) for f in range(1, folds + 1)]
    assert all(len(h) == 3 for h in held) and len(set().union(*map(set, held))) == 9  # disjoint
    assert fold_layout(10, "product", folds=4)[:2] == (4, 2)
    with pytest.raises(SystemExit):
        fold_layout(10, "product", folds=4, per_fold=3)


def test_ten_classes_run_end_to_end_with_the_default_layout(tmp_path, capsys):
    root = write_folder(tmp_path / "ten", n_identities=10, per_identity=5)
    assert accuracy.main(["--data", str(root), "--models", "raw-pixels,pca,colour-hist", "--per-class", "4",
                          "--max-impostors", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["folds"] == [1, 2, 3] and report["per_fold"] == 3 and report["images"] == 40
    fold = report["models"]["colour-hist"]["folds"]["1"]  # 3 classes x 4 images: 18 genuine, 48 impostor pairs
    assert (fold["genuine"], fold["impostor"]) == (18, 48) and "impostor_available" not in fold
    assert any(line.startswith("layout: fewer than 20 identities") for line in lines)
    assert accuracy.main(["--data", str(root), "--models", "raw-pixels", "--per-class", "0", "--max-impostors", "40",
                          "--only-folds", "2"]) == 0
    fold = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["models"]["raw-pixels"]["folds"]["2"]
    assert (fold["genuine"], fold["impostor"], fold["impostor_available"]) == (30, 40, 75)
