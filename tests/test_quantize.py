"""The int8 serving model: PReLU rewritten exactly, shipped inside the bundle (new id, hashes),
served and calibrated through it, never silently replaced by model.keras, refused when it drifts."""

import json
import shutil

import numpy as np
import pytest

from calibration.calibrate import embed_acquired
from imagesets import load_folder
from tests.synthetic import write_folder
from training import quantize
from verifier.core.bundle import (SERVING_FILE, derive_bundle_id, load_bundle, read_meta, save_bundle,
                                  write_calibration)
from verifier.core.errors import BundleError, VerifierError
from verifier.core.profiles import get_profile, preprocess_batch
from verifier.core.scorer import Scorer

PROFILE = get_profile("face-small")


def prelu_tower(seed=0):
    """A tiny tower with PReLUs (one inside a nested model, as SFace sits inside the fused tower)."""
    import keras

    keras.utils.set_random_seed(seed)
    alpha = keras.initializers.RandomUniform(0.05, 0.6, seed=seed)
    inner_in = keras.Input((27, 22, 8))
    inner = keras.layers.Conv2D(8, 3, padding="same")(inner_in)
    inner = keras.layers.PReLU(shared_axes=[1, 2], alpha_initializer=alpha)(inner)
    nested = keras.Model(inner_in, inner, name="nested")
    inputs = keras.Input(PROFILE.input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2], alpha_initializer=alpha)(x)
    x = nested(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, bias_initializer=keras.initializers.RandomNormal(seed=seed))(x)
    return keras.Model(inputs, keras.layers.UnitNormalization()(x), name="prelu_tower")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("q") / "faces", n_identities=6, per_identity=6)


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory, faces):
    path = tmp_path_factory.mktemp("q") / "float"
    names = load_folder(faces).identities
    save_bundle(path, prelu_tower(), profile=PROFILE, metric="euclidean",
                recipe={"loss": "none", "seed": 0, "dataset": {"name": "synthetic"}, "train_identities": names[:4],
                        "validation_identities": [], "holdout_identities": names[4:], "refit": None})
    return path


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, float_bundle, faces, calibrated_bundle):
    path = tmp_path_factory.mktemp("q") / "int8"
    shutil.copytree(float_bundle, path)
    calibration = json.loads((calibrated_bundle / "calibration.json").read_text())
    write_calibration(path, calibration)  # measured on the float model: must go
    assert quantize.main(["--bundle", str(path), "--data", str(faces), "--images", "8"]) == 0
    return path


def test_the_rewritten_prelu_computes_the_same_function():
    import keras

    model = prelu_tower()
    rewritten = quantize.for_int8(model)

    def layers(m):
        for layer in m.layers:
            yield from layers(layer) if isinstance(layer, keras.Model) else [layer]

    assert not any(isinstance(layer, keras.layers.PReLU) for layer in layers(rewritten))
    x = np.random.default_rng(0).normal(size=(4,) + PROFILE.input_shape).astype(np.float32)
    np.testing.assert_allclose(rewritten(x), model(x), atol=1e-6)


def test_the_int8_model_ships_inside_the_bundle_with_a_new_id(float_bundle, int8_bundle):
    before, after = read_meta(float_bundle), read_meta(int8_bundle)
    assert after["bundle_id"] != before["bundle_id"]
    assert after["files"]["model.keras"] == before["files"]["model.keras"]
    assert SERVING_FILE in after["files"] and (int8_bundle / SERVING_FILE).is_file()
    serving = after["serving"]
    assert serving["file"] == SERVING_FILE and serving["quantization"] == quantize.QUANTIZATION
    assert serving["representative"] == {"of": "training identities", "identities": 4, "seed": 0, "images": 8}
    assert serving["agreement_with_model_keras"]["images"] == 8
    assert serving["agreement_with_model_keras"]["mean_cosine"] >= quantize.MIN_MEAN_COSINE
    assert not (int8_bundle / "calibration.json").exists()


def test_serving_and_calibration_both_embed_through_the_int8_model(int8_bundle, faces, tmp_path):
    scorer = Scorer.from_bundle(int8_bundle, cache_dir=tmp_path)
    assert scorer.backend.startswith("tflite") and scorer.agreement <= quantize.TOLERANCE
    assert not any(tmp_path.iterdir())  # nothing exported: the bundle's own model serves
    images = load_folder(faces).images[:6]
    served = scorer.embed(images)
    calibrated, acquired = embed_acquired(int8_bundle, read_meta(int8_bundle), images)
    assert acquired.all()
    np.testing.assert_allclose(calibrated, served, atol=1e-6)
    reference = np.asarray(load_bundle(int8_bundle).model(preprocess_batch(images, PROFILE)))
    assert np.min(quantize.cosines(served, reference)) > 0.95  # close to model.keras, not equal
    assert not np.allclose(served, reference, atol=1e-4)


def test_a_substituted_int8_file_is_refused(int8_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(int8_bundle, path)
    data = bytearray((path / SERVING_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / SERVING_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.int8.tflite does not match the sha256"):
        Scorer.from_bundle(path, cache_dir=tmp_path)


def _edit_meta(path, edit):
    meta = json.loads((path / "bundle.json").read_text())
    edit(meta)
    meta["bundle_id"] = derive_bundle_id(meta)
    (path / "bundle.json").write_text(json.dumps(meta))


def test_a_disagreeing_int8_model_is_not_replaced_by_model_keras(int8_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(int8_bundle, path)
    _edit_meta(path, lambda meta: meta["serving"].update(reference=np.zeros((5, 16)).tolist()))
    with pytest.raises(VerifierError, match="disagrees with its recorded embeddings") as caught:
        Scorer.from_bundle(path, cache_dir=tmp_path)  # backend auto: no fallback to tf.function
    assert caught.value.code == "export_mismatch"


def test_a_serving_model_bundle_json_does_not_list_is_refused(int8_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(int8_bundle, path)
    _edit_meta(path, lambda meta: meta["serving"].update(file="elsewhere.tflite"))
    with pytest.raises(BundleError, match="serving model is not one of the files it lists"):
        read_meta(path)


def test_a_drifting_quantization_is_not_shipped(float_bundle, faces, tmp_path, monkeypatch):
    path = tmp_path / "b"
    shutil.copytree(float_bundle, path)
    monkeypatch.setattr(quantize, "MIN_MEAN_COSINE", 1.01)
    messages = []
    inputs = preprocess_batch(load_folder(faces).images[:8], PROFILE)
    assert quantize.add_int8_serving(path, inputs[:4], inputs[4:], {"of": "test"}, messages.append) is None
    assert "not shipped" in messages[0] and "the bundle stays float32" in messages[0]
    assert read_meta(path) == read_meta(float_bundle) and not (path / SERVING_FILE).exists()


def test_quantizing_needs_the_data_the_bundle_was_trained_on(float_bundle, tmp_path, capsys):
    other = write_folder(tmp_path / "other", n_identities=2, per_identity=3, seed=5)
    for folder in list(other.iterdir()):
        folder.rename(other / f"stranger-{folder.name}")
    assert quantize.main(["--bundle", str(float_bundle), "--data", str(other)]) == 2
    assert "none of the bundle's training identities is in" in capsys.readouterr().err


def test_there_is_no_float_export_to_make_for_it(int8_bundle, tmp_path, monkeypatch, capsys):
    from verifier.cli.main import main as verifier_main
    from verifier.core import fastpath

    monkeypatch.setenv(fastpath.CACHE_ENV, str(tmp_path))
    assert verifier_main(["export", "--bundle", str(int8_bundle)]) == 0
    assert "ships its own serving model (model.int8.tflite): nothing to export" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
