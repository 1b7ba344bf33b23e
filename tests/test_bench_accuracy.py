"""bench/accuracy.py's signature protocol and the classical baselines of bench/baselines.py."""

import numpy as np

from bench.accuracy import evaluate
from bench.baselines import BASELINES, UNIFORM_LBP, hog, lbp


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
