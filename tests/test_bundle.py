"""Model bundle: save/load round trip, ids, file hashes, calibration files, format upgrade and clear errors."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from verifier.core.bundle import (derive_bundle_id, file_sha256, load_bundle, read_calibration, read_meta,
                                  upgrade_bundle, write_calibration)
from verifier.core.embedder import Embedder
from verifier.core.errors import BundleError


@pytest.fixture
def bundle_copy(tmp_path, tiny_bundle):
    path = tmp_path / "copy"
    shutil.copytree(tiny_bundle, path)
    return path


def write_meta(path, meta, reseal=True):
    """Write bundle.json, by default with model.keras's hash and the bundle id made consistent again."""
    if reseal:
        meta = dict(meta, files={"model.keras": file_sha256(path / "model.keras")})
        meta["bundle_id"] = derive_bundle_id(meta)
    (path / "bundle.json").write_text(json.dumps(meta))
    return meta


def downgrade_to_format_1(path):
    """Rewrite a bundle as format 1 wrote it (no file hashes; the id hashed model bytes + meta); returns the id."""
    meta = json.loads((path / "bundle.json").read_text())
    meta.pop("files")
    meta.pop("bundle_id")
    meta["format_version"] = 1
    sha = hashlib.sha256((path / "model.keras").read_bytes())
    sha.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    meta["bundle_id"] = sha.hexdigest()[:16]
    (path / "bundle.json").write_text(json.dumps(meta))
    return meta["bundle_id"]


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
    with pytest.raises(BundleError, match="model.keras does not match the sha256 in bundle.json"):
        load_bundle(bundle_copy, with_model=False)
    write_meta(bundle_copy, read_meta(bundle_copy))  # recorded as it is: Keras itself refuses it
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
    write_meta(bundle_copy, dict(meta, input_shape=[28, 28, 1]))
    with pytest.raises(BundleError, match="does not match bundle.json input_shape"):
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


# -- integrity: every file hashed, the id derived from the hashes ---------------------------

def test_bundle_json_records_the_model_hash_and_derives_the_id(tiny_bundle, tmp_path):
    meta = read_meta(tiny_bundle)
    assert meta["format_version"] == 2
    assert meta["files"] == {"model.keras": file_sha256(tiny_bundle / "model.keras")}
    assert meta["bundle_id"] == derive_bundle_id(meta)
    other = dict(meta, files={"model.keras": "0" * 64})
    assert derive_bundle_id(other) != meta["bundle_id"]  # another model.keras, another bundle id


def test_a_changed_model_keras_is_refused(bundle_copy):
    with open(bundle_copy / "model.keras", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="model.keras does not match the sha256 in bundle.json") as err:
        load_bundle(bundle_copy, with_model=False)
    assert err.value.status == 503


def test_an_edited_bundle_json_is_refused(bundle_copy):
    meta = read_meta(bundle_copy)
    write_meta(bundle_copy, dict(meta, files={"model.keras": "0" * 64}), reseal=False)
    with pytest.raises(BundleError, match="bundle_id .* does not match its content"):
        load_bundle(bundle_copy, with_model=False)
    write_meta(bundle_copy, {key: value for key, value in meta.items() if key != "files"}, reseal=False)
    with pytest.raises(BundleError, match="lacks the sha256 of model.keras"):
        load_bundle(bundle_copy, with_model=False)


def test_an_edited_calibration_is_refused(bundle_copy):
    write_calibration(bundle_copy, {"policy": "eer", "threshold": 0.7, "confidence": {"kind": "logistic"}})
    stored = read_calibration(bundle_copy)
    (bundle_copy / "calibration.json").write_text(json.dumps(dict(stored, threshold=1.9)))
    with pytest.raises(BundleError, match="calibration_id does not match its content"):
        load_bundle(bundle_copy, with_model=False)


def test_format_1_is_refused_with_the_upgrade_command_then_upgraded_in_place(bundle_copy):
    write_calibration(bundle_copy, {"policy": "eer", "threshold": 0.7, "confidence": {"kind": "logistic"}})
    old_id = downgrade_to_format_1(bundle_copy)
    calibration = read_calibration(bundle_copy)
    (bundle_copy / "calibration.json").write_text(json.dumps(dict(calibration, bundle_id=old_id)))
    with pytest.raises(BundleError, match="python -m verifier export --bundle"):
        load_bundle(bundle_copy, with_model=False)
    old, new = upgrade_bundle(bundle_copy)
    bundle = load_bundle(bundle_copy, with_model=False)
    assert old == old_id and bundle.bundle_id == new != old
    assert bundle.calibration["bundle_id"] == new and bundle.calibration["threshold"] == 0.7
    assert upgrade_bundle(bundle_copy) is None  # already current


def test_upgrade_refuses_a_format_1_bundle_whose_model_changed(bundle_copy):
    downgrade_to_format_1(bundle_copy)
    with open(bundle_copy / "model.keras", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="not upgrading it"):
        upgrade_bundle(bundle_copy)
