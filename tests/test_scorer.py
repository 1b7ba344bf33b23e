"""The pair scorer: fast path agrees with model.keras, falls back safely, decides from calibration."""

import json
import shutil

import numpy as np
import pytest

from tests.synthetic import identity_images
from verifier.core import fastpath
from verifier.core.bundle import load_bundle
from verifier.core.errors import VerifierError
from verifier.core.profiles import preprocess_batch
from verifier.core.scorer import Scorer


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory):
    """This module's own export cache ($VERIFIER_CACHE_DIR), so no test reads or writes another's."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("cache")
        patch.setenv(fastpath.CACHE_ENV, str(path))
        yield path


def cached(bundle_dir, name):
    """A file of the cached export of the bundle in `bundle_dir`."""
    return fastpath.export_dir(load_bundle(bundle_dir, with_model=False)) / name


@pytest.fixture(scope="module")
def faces():
    """Two synthetic identities, four images each (uint8 HxW)."""
    return identity_images(n_identities=2, per_identity=4)


@pytest.fixture(scope="module")
def keras_reference(calibrated_bundle, faces):
    """model.keras's own embeddings of the synthetic faces, and those images."""
    bundle = load_bundle(calibrated_bundle)
    images = faces["id00"] + faces["id01"]
    batch = preprocess_batch(images, bundle.profile)
    return images, np.asarray(bundle.model(batch, training=False))


@pytest.fixture
def bundle_copy(tmp_path, calibrated_bundle):
    path = tmp_path / "bundle"
    shutil.copytree(calibrated_bundle, path)
    return path


def test_tflite_fast_path_agrees_with_model_keras(calibrated_bundle, keras_reference):
    images, reference = keras_reference
    scorer = Scorer.from_bundle(calibrated_bundle)
    assert scorer.backend.startswith("tflite")
    assert scorer.agreement <= fastpath.TOLERANCE
    embeddings = scorer.embed(images)
    assert embeddings.dtype == np.float32 and embeddings.shape == reference.shape
    assert np.abs(embeddings - reference).max() < 1e-4
    assert cached(calibrated_bundle, fastpath.TFLITE_FILE).exists()
    assert not (calibrated_bundle / fastpath.TFLITE_FILE).exists()  # serving never writes into the bundle


def test_tf_function_backend_agrees_with_model_keras(calibrated_bundle, keras_reference):
    images, reference = keras_reference
    scorer = Scorer.from_bundle(calibrated_bundle, backend="tf.function")
    assert scorer.backend == "tf.function" and scorer.agreement is None
    assert np.abs(scorer.embed(images) - reference).max() < 1e-5


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tensorflow_interpreter_runs_the_export_too(calibrated_bundle, keras_reference):
    """Without LiteRT installed the same file runs on tf.lite.Interpreter."""
    import tensorflow as tf

    images, reference = keras_reference
    bundle = load_bundle(calibrated_bundle, with_model=False)
    data, _ = fastpath.read_export(bundle) or fastpath.build_export(load_bundle(calibrated_bundle))
    embedder = fastpath.TFLiteEmbedder(data, interpreter=tf.lite.Interpreter)
    assert np.abs(embedder.embed_batch(preprocess_batch(images, bundle.profile)) - reference).max() < 1e-4


def test_batches_larger_than_a_chunk_and_changing_sizes(calibrated_bundle, keras_reference):
    images, reference = keras_reference
    scorer = Scorer.from_bundle(calibrated_bundle)
    scorer.embedder.batch_size = 3  # 8 images -> chunks of 3, 3, 2
    assert np.abs(scorer.embed(images) - reference).max() < 1e-4
    assert np.abs(scorer.embed(images[:1]) - reference[:1]).max() < 1e-4
    assert scorer.embed([]).shape == (0, reference.shape[1])


def test_stale_export_is_rebuilt(bundle_copy):
    Scorer.from_bundle(bundle_copy)
    record_path = cached(bundle_copy, fastpath.RECORD_FILE)
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, model_sha256="0" * 64)))
    scorer = Scorer.from_bundle(bundle_copy)
    assert scorer.backend.startswith("tflite")
    assert json.loads(record_path.read_text())["model_sha256"] == record["model_sha256"]


def test_disagreeing_export_falls_back_to_tf_function(bundle_copy, caplog):
    Scorer.from_bundle(bundle_copy)
    record_path = cached(bundle_copy, fastpath.RECORD_FILE)
    record = json.loads(record_path.read_text())
    record["reference"] = (np.asarray(record["reference"]) + 0.01).tolist()
    record_path.write_text(json.dumps(record))
    scorer = Scorer.from_bundle(bundle_copy)
    assert scorer.backend == "tf.function"
    assert "disagrees with model.keras" in caplog.text
    with pytest.raises(VerifierError, match="disagrees"):
        Scorer.from_bundle(bundle_copy, backend="tflite")


def test_read_only_bundle_keeps_the_export_in_memory(bundle_copy, tmp_path):
    scorer = Scorer.from_bundle(bundle_copy, write_export=False, cache_dir=tmp_path / "unused")
    assert scorer.backend.startswith("tflite")
    assert not (bundle_copy / fastpath.TFLITE_FILE).exists() and not (tmp_path / "unused").exists()


def test_a_substituted_tflite_is_rebuilt_not_served(bundle_copy, caplog):
    """A model.tflite that is not the one its record hashed (here: another, valid model) never serves."""
    from tests.conftest import tiny_tower

    Scorer.from_bundle(bundle_copy)
    tflite = cached(bundle_copy, fastpath.TFLITE_FILE)
    original = tflite.read_bytes()
    bundle = load_bundle(bundle_copy, with_model=False)
    tflite.write_bytes(fastpath.convert(tiny_tower(bundle.profile, seed=1), bundle.profile))
    scorer = Scorer.from_bundle(bundle_copy)
    assert "does not match the sha256" in caplog.text
    assert scorer.backend.startswith("tflite") and scorer.agreement <= fastpath.TOLERANCE
    assert tflite.read_bytes() == original  # re-exported from model.keras


def test_exports_are_cached_per_bundle_id(calibrated_bundle, tmp_path, monkeypatch):
    bundle = load_bundle(calibrated_bundle, with_model=False)
    assert fastpath.export_dir(bundle, tmp_path) == tmp_path / "exports" / bundle.bundle_id
    monkeypatch.delenv(fastpath.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fastpath.export_dir(bundle) == tmp_path / "xdg" / "verifier" / "exports" / bundle.bundle_id


@pytest.fixture(scope="module")
def scorer(calibrated_bundle):
    return Scorer.from_bundle(calibrated_bundle)


def test_identity_fields(scorer, calibrated_bundle):
    calibration = json.loads((calibrated_bundle / "calibration.json").read_text())
    assert scorer.calibration_id == calibration["calibration_id"]
    assert scorer.bundle_id == calibration["bundle_id"]
    assert scorer.profile.name == "face-small" and scorer.metric == "euclidean"


def test_decide_uses_the_calibrated_threshold(scorer):
    below, at, above = scorer.decide([0.1, 0.5, 0.9])
    assert [below["decision"], at["decision"], above["decision"]] == ["same", "same", "different"]
    assert all(d["threshold"] == 0.5 and d["policy"] == "eer" for d in (below, at, above))
    assert below["confidence"] > 0.9 > 0.1 > above["confidence"]  # a=-10, b=5: sigmoid(5 - 10 d)
    assert at["confidence"] == pytest.approx(0.5)


def test_decide_per_request_threshold_and_target_fmr(scorer):
    (d,) = scorer.decide([0.3], threshold=0.25)
    assert d["decision"] == "different" and d["threshold"] == 0.25
    assert d["policy"] == "request:threshold=0.25"
    (d,) = scorer.decide([0.3], threshold="0.35")  # form fields arrive as text
    assert d["decision"] == "same"
    (d,) = scorer.decide([0.3], target_fmr=0.1)  # fixture curve: fmr = distance / 2
    assert d["threshold"] == pytest.approx(0.2) and d["decision"] == "different"
    assert d["policy"] == "request:target_fmr=0.1"


@pytest.mark.parametrize("options, status, code", [
    ({"target_fmr": 0.01}, 422, "unsupported_target_fmr"),  # finer than 3/N impostors
    ({"target_fmr": 1.5}, 422, "unsupported_target_fmr"),
    ({"threshold": -1}, 422, "invalid_threshold"),
    ({"threshold": "abc"}, 400, "invalid_option"),
    ({"threshold": float("nan")}, 400, "invalid_option"),
    ({"threshold": True}, 400, "invalid_option"),
    ({"threshold": 0.5, "target_fmr": 0.1}, 422, "conflicting_options"),
])
def test_bad_overrides_are_clear_errors(scorer, options, status, code):
    with pytest.raises(VerifierError) as info:
        scorer.decide([0.3], **options)
    assert (info.value.status, info.value.code) == (status, code)


def test_section_is_used_for_fused_scores(scorer):
    fusion = dict(scorer.calibration, policy="fmr=0.1", threshold=1.0)
    (d,) = scorer.decide([0.8], section=fusion)
    assert d["decision"] == "same" and d["policy"] == "fmr=0.1"


def test_uncalibrated_bundle_embeds_but_does_not_decide(tiny_bundle):
    scorer = Scorer.from_bundle(tiny_bundle)
    assert scorer.calibration is None and scorer.calibration_id is None
    with pytest.raises(VerifierError) as info:
        scorer.decide([0.1])
    assert info.value.status == 503 and info.value.code == "not_calibrated"
    assert "not calibrated" in info.value.message


def test_an_export_that_gives_nan_on_a_blank_input_is_not_served(tmp_path):
    """ReLU features normalised per position are 0 / 0 on an empty page: Keras gives 0, TFLite NaN.
    Random probes never show it; the blank probe does, so the safe path serves instead."""
    import keras

    from verifier.core.bundle import save_bundle
    from verifier.core.profiles import get_profile

    profile = get_profile("signature")
    inputs = keras.Input(profile.input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, activation="relu")(inputs)
    x = keras.layers.UnitNormalization(axis=-1)(keras.layers.AveragePooling2D(8)(x))
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(8)(keras.layers.Flatten()(x)))
    save_bundle(tmp_path / "b", keras.Model(inputs, outputs), profile=profile, metric="euclidean", recipe={})
    data, record = fastpath.build_export(load_bundle(tmp_path / "b"))
    assert record["probe_blank"] and not record["max_abs_diff"] <= fastpath.TOLERANCE
    scorer = Scorer.from_bundle(tmp_path / "b", cache_dir=tmp_path / "cache")
    assert scorer.backend == "tf.function"
    assert np.isfinite(scorer.embed_inputs(np.zeros((1,) + profile.input_shape, np.float32))).all()


def test_an_idle_scorer_spreads_a_requests_images_over_its_threads(calibrated_bundle, keras_reference):
    import threading

    images, reference = keras_reference
    serial = Scorer.from_bundle(calibrated_bundle, threads=1)
    parallel = Scorer.from_bundle(calibrated_bundle, threads=2)
    np.testing.assert_array_equal(parallel.embed(images), serial.embed(images))
    ran_on = []

    def where(item):
        ran_on.append(threading.current_thread().name)
        return item

    assert parallel._map(where, [1, 2, 3]) == [1, 2, 3]
    assert all(name.startswith("scorer") for name in ran_on)
    ran_on.clear()
    parallel._active = 2  # another request of this process is at work: keep to the caller's thread
    assert parallel._map(where, [1, 2, 3]) == [1, 2, 3]
    assert set(ran_on) == {threading.current_thread().name}
