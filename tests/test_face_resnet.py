"""dlib's face ResNet from the face-api weights: reading, fetching, and the Keras rebuild.

The weights here are synthetic (seeded, same layout and mostly uint8-quantized like the
real file), so nothing needs npm; the real weights are checked too when they are on disk
(FACE_API_DIR, else the default cache that `fetch_face_api()` fills).
"""

import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest

from training import face_resnet as fr
from training.face_resnet import (BIN_FILE, MANIFEST_FILE, STAGES, WeightsError, build_face_resnet,
                                  fetch_face_api, read_weights, reference_forward, set_trainable_from,
                                  stage_of, weight_specs)
from verifier.core.errors import VerifierError
from verifier.core.files import file_sha256

RELATIVE_TOLERANCE = 1e-5
# filter values per conv layer in face-api's extractParams.ts (a residualDown's conv1 has half)
JS_FILTER_VALUES = {"conv32_down": 4704, "conv32": 9216, "conv64": 36864, "conv128": 147456,
                    "conv256": 589824}
FLOAT32_PREFIX = "conv64_"  # stored unquantized, as the real file stores these filters
ENCODINGS = {"conv128_1/conv1/conv/filters": "uint16", "conv32_down/conv/bias": "float16"}


def _values(rng, name, shape):
    """Plausible random values for one weight, so activations stay in range through the net."""
    if name.endswith("/filters"):
        return rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[:3])), shape)
    if name.endswith("/conv/bias"):
        return rng.uniform(-1e-3, 1e-3, shape)
    if name.endswith("/scale/weights"):
        return rng.uniform(0.7, 1.3, shape)
    if name.endswith("/scale/biases"):
        return rng.uniform(-0.1, 0.1, shape)
    return rng.normal(0.0, 1.0 / 16.0, shape)  # fc


def _encoding(name):
    """How the synthetic file stores a weight: float32, uint8 (most), uint16 or float16."""
    if name.startswith(FLOAT32_PREFIX) and name.endswith("/filters"):
        return "float32"
    return ENCODINGS.get(name, "uint8")


def _encode(name, shape, values, encoding):
    """(manifest entry, stored bytes, the float32 values a reader should get back)."""
    entry = {"name": name, "shape": list(shape), "dtype": "float32"}
    if encoding == "float32":
        stored = values.astype("<f4")
        return entry, stored.tobytes(), stored.astype(np.float32)
    if encoding == "float16":
        entry["quantization"] = {"dtype": "float16"}
        stored = values.astype("<f2")
        return entry, stored.tobytes(), stored.astype(np.float32)
    levels = 255 if encoding == "uint8" else 65535
    low, scale = float(values.min()), float(values.max() - values.min()) / levels
    entry["quantization"] = {"dtype": encoding, "scale": scale, "min": low}
    stored = np.round((values - low) / scale).astype(np.dtype(encoding).newbyteorder("<"))
    return entry, stored.tobytes(), (stored.astype(np.float64) * scale + low).astype(np.float32)


def write_synthetic(folder, seed=0):
    """A manifest + .bin in face-api's layout under folder; the weights they hold."""
    rng = np.random.default_rng(seed)
    entries, chunks, expected = [], [], {}
    for name, shape in weight_specs():
        entry, data, values = _encode(name, shape, _values(rng, name, shape), _encoding(name))
        entries.append(entry)
        chunks.append(data)
        expected[name] = values
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST_FILE
    manifest.write_text(json.dumps([{"paths": [BIN_FILE], "weights": entries}]))
    (folder / BIN_FILE).write_bytes(b"".join(chunks))
    return manifest, folder / BIN_FILE, expected


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("face-api"))


@pytest.fixture(scope="module")
def model(synthetic):
    return build_face_resnet(read_weights(*synthetic[:2]))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0.0, 255.0, (2,) + fr.INPUT_SHAPE).astype(np.float32)


def assert_matches_reference(got, reference):
    """A model's outputs equal an independent reference's to RELATIVE_TOLERANCE of the output scale."""
    got = np.asarray(got)
    assert got.shape == reference.shape
    scale = np.abs(reference).max()
    assert np.isfinite(reference).all() and scale > 0
    assert np.abs(got - reference).max() <= RELATIVE_TOLERANCE * scale


def assert_agrees(model, weights, images):
    """Keras and the plain-TF reference agree."""
    reference = reference_forward(weights, images)
    assert reference.shape == (len(images), fr.EMBEDDING_SIZE)
    assert_matches_reference(model(images, training=False), reference)


# ---------------------------------------------------------------- reading the weights

def test_read_weights_dequantizes_every_encoding(synthetic):
    manifest, bin_path, expected = synthetic
    weights = read_weights(manifest, bin_path)
    assert list(weights) == [name for name, _ in weight_specs()]
    for name, values in expected.items():
        assert weights[name].dtype == np.float32
        np.testing.assert_array_equal(weights[name], values, err_msg=name)


def test_layout_matches_face_api_extract_params():
    filters = {name: int(np.prod(shape)) for name, shape in weight_specs() if name.endswith("/filters")}
    for name, count in filters.items():
        stage = name.split("/")[0]
        key = "conv32_down" if stage == "conv32_down" else stage.split("_")[0]
        halved = stage in fr.DOWN_STAGES and "/conv1/" in name and stage != "conv256_down_out"
        assert count == JS_FILTER_VALUES[key] // (2 if halved else 1), name
    assert sum(int(np.prod(s)) for _, s in weight_specs()) == 5614592


@pytest.mark.parametrize("change, message", [(-1, "truncated"), (1, "oversized")])
def test_wrong_size_bin_is_refused(synthetic, tmp_path, change, message):
    manifest, bin_path, _ = synthetic
    data = bin_path.read_bytes()
    bad = tmp_path / BIN_FILE
    bad.write_bytes(data[:change] if change < 0 else data + b"\0" * change)
    with pytest.raises(WeightsError, match=f"{message}: {len(data) + change} bytes, "
                                           f"the manifest describes {len(data)}"):
        read_weights(manifest, bad)


def test_unknown_dtype_is_refused(synthetic, tmp_path):
    manifest, bin_path, _ = synthetic
    groups = json.loads(manifest.read_text())
    groups[0]["weights"][0]["quantization"]["dtype"] = "int4"
    bad = tmp_path / MANIFEST_FILE
    bad.write_text(json.dumps(groups))
    with pytest.raises(WeightsError, match="conv32_down/conv/filters has unknown quantization dtype 'int4'"):
        read_weights(bad, bin_path)


def test_missing_weight_is_refused_before_building(synthetic):
    weights = read_weights(*synthetic[:2])
    del weights["conv128_2/conv2/scale/biases"]
    with pytest.raises(WeightsError, match="conv128_2/conv2/scale/biases is missing"):
        build_face_resnet(weights)


# ---------------------------------------------------------------- the Keras model

def test_model_interface(model):
    assert model.name == "face_resnet"
    assert model.input.name == "image" and tuple(model.input.shape) == (None,) + fr.INPUT_SHAPE
    assert tuple(model.output.shape) == (None, fr.EMBEDDING_SIZE)
    names = {layer.name for layer in model.layers}
    assert set(STAGES) <= names
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_keras_agrees_with_reference(model, synthetic, images):
    assert_agrees(model, read_weights(*synthetic[:2]), images)


def test_safe_mode_round_trip_is_identical(model, images, tmp_path):
    path = tmp_path / "face_resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(images, training=False)),
                                  np.asarray(model(images, training=False)))


def test_stage_of_takes_the_longest_matching_stage():
    assert stage_of("conv256_down_out_conv1") == "conv256_down_out"
    assert stage_of("conv256_down_conv1") == "conv256_down"
    assert stage_of("conv32_1") == "conv32_1"
    assert stage_of("fc_mean") == "fc"
    assert stage_of("normalize") is None


def test_set_trainable_from_unfreezes_the_later_stages(model):
    try:
        set_trainable_from(model, "conv256_down_out")
        trainable = {v.path.split("/")[0] for v in model.trainable_weights}
        assert trainable == {"conv256_down_out_conv1", "conv256_down_out_conv2", "fc"}
        set_trainable_from(model, None)
        assert not model.trainable_weights
    finally:
        set_trainable_from(model, STAGES[0])
    assert len(model.trainable_weights) == 2 * 29 + 1  # 29 convs (kernel, bias) and the fc


# ---------------------------------------------------------------- fetching

def _fake_npm(bindir, tarball, sleep_s=0.0):
    """An `npm` on PATH that records its arguments and drops `tarball` into its cwd."""
    bindir.mkdir(exist_ok=True)
    script = bindir / "npm"
    script.write_text(f"#!{sys.executable}\n"
                      "import shutil, sys, time\n"
                      f"open({str(bindir / 'argv')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
                      f"time.sleep({sleep_s})\n"
                      f"shutil.copy({str(tarball)!r}, 'vladmandic-face-api-1.7.15.tgz')\n")
    script.chmod(0o755)
    return bindir


def _tarball(path, files, link=None):
    """An npm-style .tgz with package/model/<name> members (and optionally a symlink member)."""
    with tarfile.open(path, "w:gz") as tar:
        for source in files:
            tar.add(source, arcname=fr.MEMBER_DIR + source.name)
        if link is not None:
            member = tarfile.TarInfo(fr.MEMBER_DIR + link)
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
    return path


@pytest.fixture
def pinned_to_synthetic(synthetic, monkeypatch):
    """Pin FILE_SHA256 to the synthetic files, as if they were the published ones."""
    manifest, bin_path, _ = synthetic
    monkeypatch.setattr(fr, "FILE_SHA256", {MANIFEST_FILE: file_sha256(manifest),
                                            BIN_FILE: file_sha256(bin_path)})
    return manifest, bin_path


def test_fetch_reuses_an_intact_cache_without_npm(pinned_to_synthetic, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    for source in pinned_to_synthetic:
        shutil.copy(source, cache)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fetch_face_api(cache) == (cache / MANIFEST_FILE, cache / BIN_FILE)


def test_fetch_without_npm_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match=r"apt-get install npm") as caught:
        fetch_face_api(tmp_path / "cache")
    assert isinstance(caught.value, VerifierError) and caught.value.code == "weights_error"


def test_fetch_extracts_the_two_members(pinned_to_synthetic, tmp_path, monkeypatch):
    tarball = _tarball(tmp_path / "fake.tgz", pinned_to_synthetic)
    bindir = _fake_npm(tmp_path / "bin", tarball)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(fr, "TARBALL_SHA256", file_sha256(tarball))
    cache = tmp_path / "cache"
    manifest, bin_path = fetch_face_api(cache)
    assert (bindir / "argv").read_text() == f"pack {fr.PACKAGE_SPEC} --silent"
    assert manifest.read_bytes() == pinned_to_synthetic[0].read_bytes()
    assert bin_path.read_bytes() == pinned_to_synthetic[1].read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted([MANIFEST_FILE, BIN_FILE])


def test_fetch_refuses_a_tarball_with_the_wrong_checksum(synthetic, tmp_path, monkeypatch):
    tarball = _tarball(tmp_path / "fake.tgz", synthetic[:2])
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path / "bin", tarball)))
    message = (f"checksum mismatch for {fr.PACKAGE_SPEC} tarball vladmandic-face-api-1.7.15.tgz: "
               f"expected sha256 {fr.TARBALL_SHA256}, got {file_sha256(tarball)}")
    with pytest.raises(WeightsError, match=message):
        fetch_face_api(tmp_path / "cache")


def test_fetch_refuses_a_member_with_the_wrong_checksum(synthetic, tmp_path, monkeypatch):
    tarball = _tarball(tmp_path / "fake.tgz", synthetic[:2])
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path / "bin", tarball)))
    monkeypatch.setattr(fr, "TARBALL_SHA256", file_sha256(tarball))
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match=f"checksum mismatch for package/model/{MANIFEST_FILE}.*"
                                           f"expected sha256 {fr.FILE_SHA256[MANIFEST_FILE]}, got "
                                           f"{file_sha256(synthetic[0])}"):
        fetch_face_api(cache)
    assert list(cache.iterdir()) == []


def test_fetch_refuses_a_link_member(pinned_to_synthetic, tmp_path, monkeypatch):
    tarball = _tarball(tmp_path / "fake.tgz", pinned_to_synthetic[:1], link=BIN_FILE)
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path / "bin", tarball)))
    monkeypatch.setattr(fr, "TARBALL_SHA256", file_sha256(tarball))
    with pytest.raises(WeightsError, match=f"package/model/{BIN_FILE} is not a regular file"):
        fetch_face_api(tmp_path / "cache")


def test_fetch_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_npm(tmp_path / "bin", tmp_path / "none.tgz", sleep_s=10)))
    with pytest.raises(WeightsError, match="did not finish within 0.5 s"):
        fetch_face_api(tmp_path / "cache", timeout=0.5)


# ---------------------------------------------------------------- the real weights

def _real_dir():
    return Path(os.environ.get("FACE_API_DIR", fr.DEFAULT_CACHE_DIR))


@pytest.mark.skipif(not ((_real_dir() / MANIFEST_FILE).is_file() and (_real_dir() / BIN_FILE).is_file()),
                    reason="real face-api weights not on disk (set FACE_API_DIR or run fetch_face_api())")
def test_real_weights_agree_with_reference(images):
    manifest, bin_path = _real_dir() / MANIFEST_FILE, _real_dir() / BIN_FILE
    assert file_sha256(manifest) == fr.FILE_SHA256[MANIFEST_FILE]
    assert file_sha256(bin_path) == fr.FILE_SHA256[BIN_FILE]
    weights = read_weights(manifest, bin_path)
    assert list(weights) == [name for name, _ in weight_specs()]
    assert_agrees(build_face_resnet(weights), weights, images)
