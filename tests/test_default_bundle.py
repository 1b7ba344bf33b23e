"""The shipped default bundle: open-set by construction, and its recorded metrics still hold.

`bundles/face` ships in the repo so that `make serve` starts at once; these tests
re-embed the real ORL faces it was calibrated on and recount what calibration.json claims.
"""

from pathlib import Path

import numpy as np
import pytest

from calibration.metrics import eer
from calibration.pairs import pair_comparisons
from imagesets import load_orl
from verifier.core.bundle import load_bundle
from verifier.core.distances import pair_distances
from verifier.core.embedder import Embedder
from verifier.core.scorer import Scorer

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "face"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


@pytest.fixture(scope="module")
def eval_faces(bundle):
    return load_orl().subset(bundle.calibration["identities"]["eval"])


def test_identities_are_disjoint_across_training_and_calibration(bundle):
    recipe, calibration = bundle.meta["recipe"], bundle.calibration
    trained = set(recipe["train_identities"]) | set(recipe["validation_identities"])
    held_out = set(recipe["holdout_identities"])
    used = set(calibration["identities"]["dev"]) | set(calibration["identities"]["eval"])
    assert len(held_out) >= 10 and not trained & held_out
    assert used <= held_out
    assert not set(calibration["identities"]["dev"]) & set(calibration["identities"]["eval"])
    assert recipe["dataset"]["name"] == "orl" and calibration["data"]["name"] == "orl"


def test_recorded_eval_metrics_hold_when_recounted(bundle, eval_faces):
    embeddings = Embedder.from_bundle(bundle).embed_images(eval_faces.images)
    pairs = pair_comparisons(embeddings, eval_faces.labels, eval_faces.forged, bundle.metric)
    recorded = bundle.calibration["metrics"]["eval"]
    assert len(pairs.genuine) == recorded["genuine"] and len(pairs.impostor) == recorded["impostor"]
    threshold = bundle.calibration["threshold"]
    false_matches = int((pairs.impostor <= threshold).sum())
    false_non_matches = int((pairs.genuine > threshold).sum())
    # A distance within float rounding of the threshold may flip: allow one comparison either way.
    assert abs(false_matches - recorded["fmr"]["errors"]) <= 1
    assert abs(false_non_matches - recorded["fnmr"]["errors"]) <= 1
    assert eer(pairs.genuine, pairs.impostor).value == pytest.approx(recorded["eer"]["value"], abs=0.005)


def test_fast_path_decides_like_the_calibration_on_real_faces(eval_faces):
    scorer = Scorer.from_bundle(BUNDLE, write_export=False)
    firsts = [eval_faces.images[np.flatnonzero(eval_faces.labels == k)[0]] for k in range(len(eval_faces.identities))]
    embeddings = scorer.embed(firsts)
    same = scorer.decide(pair_distances(embeddings, embeddings, scorer.metric))
    assert all(d["decision"] == "same" and d["distance"] < 1e-5 for d in same)
    pairs = pair_comparisons(embeddings, np.arange(len(firsts)), np.zeros(len(firsts), bool), scorer.metric)
    different = scorer.decide(pairs.impostor)
    assert np.mean([d["decision"] == "different" for d in different]) >= 0.8


def test_shipped_files_match_their_recorded_hashes(bundle):
    """bundle.json (format 2) seals model.keras; calibration.json names that bundle id and hashes to its own."""
    from verifier.core.bundle import derive_bundle_id, file_sha256

    assert bundle.meta["format_version"] == 2
    assert bundle.meta["files"]["model.keras"] == file_sha256(BUNDLE / "model.keras")
    assert bundle.bundle_id == derive_bundle_id(bundle.meta) == bundle.calibration["bundle_id"]
