"""Model bundle: save/load round trip, ids, calibration files and clear errors."""

import json
import shutil

import numpy as np
import pytest

from verifier.core.bundle import load_bundle, read_calibration, read_meta, write_calibration
from verifier.core.embedder import Embedder
from verifier.core.errors import BundleError


@pytest.fixture
def bundle_copy(tmp_path, tiny_bundle):
    path = tmp_path / "copy"
    shutil.copytree(tiny_bundle, path)
    return path


def test_round_trip_gives_identical_embeddings(tiny_bundle):
    first = load_bundle(tiny_bundle)
    second = load_bundle(tiny_bundle)
    batch = np.random.default_rng(0).normal(size=(5, 56, 46, 1)).astype(np.float32)
    a = Embedder.from_bundle(first).embed_batch(batch)
    b = Embedder.from_bundle(second).embed_batch(batch)
    assert a.shape == (5, 8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert first.bundle_id == read_meta(tiny_bundle)["bundle_id"]
    assert first.profile.input_shape == (56, 46, 1)
    assert "tensorflow" in first.meta["versions"]


def test_meta_reads_without_model(tiny_bundle):
    bundle = load_bundle(tiny_bundle, with_model=False)
    assert bundle.model is None and bundle.calibration is None


def test_missing_directory_and_files(tmp_path, bundle_copy):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    (bundle_copy / "model.keras").unlink()
    with pytest.raises(BundleError, match="model.keras is missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(bundle_copy)


def test_corrupt_model_and_meta(bundle_copy):
    (bundle_copy / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BundleError, match="could not be loaded"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").write_text("{ half a json")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bundle_copy)


def test_incompatible_version_and_shape(bundle_copy):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    (bundle_copy / "bundle.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").write_text(json.dumps(dict(meta, input_shape=[28, 28, 1])))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(bundle_copy)


def test_calibration_round_trip_and_staleness(bundle_copy):
    calibration = {"policy": "eer", "threshold": 0.7, "confidence": {"kind": "logistic"}}
    calibration_id = write_calibration(bundle_copy, calibration)
    stored = read_calibration(bundle_copy)
    assert stored["calibration_id"] == calibration_id
    assert stored["threshold"] == 0.7
    assert stored["bundle_id"] == read_meta(bundle_copy)["bundle_id"]
    assert write_calibration(bundle_copy, calibration) == calibration_id  # content-addressed
    (bundle_copy / "calibration.json").write_text(json.dumps(dict(stored, bundle_id="someoneelse")))
    with pytest.raises(BundleError, match="recalibrate"):
        load_bundle(bundle_copy, with_model=False)
