"""The shipped signature bundle: writer-independent by construction, calibrated on skilled
forgeries of writers it never saw, and served through the TFLite fast path like the face one.

The recount against SigComp2011 runs where `../shared/data/signatures-sigcomp2011` exists
and is skipped (saying why) elsewhere; the rest needs only the repository.
"""

from pathlib import Path

import numpy as np
import pytest

from calibration.pairs import pair_comparisons
from tests.test_profiles import _scan
from verifier.core.bundle import derive_bundle_id, file_sha256, load_bundle
from verifier.core.scorer import Scorer

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundles" / "signature"
SIGCOMP = ROOT.parent / "shared" / "data" / "signatures-sigcomp2011"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


def test_writers_are_disjoint_across_training_and_calibration(bundle):
    recipe, calibration = bundle.meta["recipe"], bundle.calibration
    trained = set(recipe["train_identities"]) | set(recipe["validation_identities"])
    held_out = set(recipe["holdout_identities"])
    used = set(calibration["identities"]["dev"]) | set(calibration["identities"]["eval"])
    assert len(held_out) == 16 and not trained & held_out and used <= held_out
    assert not set(calibration["identities"]["dev"]) & set(calibration["identities"]["eval"])
    assert calibration["impostors"] == "skilled"  # the threshold answers skilled forgeries
    assert bundle.profile.name == "signature" and bundle.profile.clean_ink and not bundle.profile.allow_flip


def test_shipped_files_match_their_recorded_hashes(bundle):
    assert bundle.meta["files"]["model.keras"] == file_sha256(BUNDLE / "model.keras")
    assert bundle.bundle_id == derive_bundle_id(bundle.meta) == bundle.calibration["bundle_id"]


def test_the_fast_path_scores_a_scan_against_itself_and_another_pen_as_the_same(tmp_path):
    scorer = Scorer.from_bundle(BUNDLE, cache_dir=tmp_path)
    assert scorer.backend.startswith("tflite")
    grey, _ = _scan(np.random.default_rng(0), ink=130)
    black, _ = _scan(np.random.default_rng(0), ink=20)
    result = scorer.verify([grey[:, :, None]], [black[:, :, None]])[0][0]
    assert result["decision"] == "same" and result["distance"] < 0.5 * result["threshold"]


@pytest.mark.skipif(not SIGCOMP.is_dir(), reason=f"{SIGCOMP} is not here (SigComp2011 is not shipped)")
def test_recorded_eval_metrics_hold_when_recounted(bundle):
    from imagesets import load_folder
    from verifier.core.embedder import Embedder

    writers = load_folder(SIGCOMP).subset(bundle.calibration["identities"]["eval"])
    pairs = pair_comparisons(Embedder.from_bundle(bundle).embed_images(writers.images), writers.labels,
                             writers.forged, bundle.metric).with_impostors("skilled")
    recorded = bundle.calibration["metrics"]["eval"]
    assert len(pairs.genuine) == recorded["genuine"] and len(pairs.impostor) == recorded["impostor"]
    threshold = bundle.calibration["threshold"]
    assert abs(int((pairs.impostor <= threshold).sum()) - recorded["fmr"]["errors"]) <= 1
    assert abs(int((pairs.genuine > threshold).sum()) - recorded["fnmr"]["errors"]) <= 1
