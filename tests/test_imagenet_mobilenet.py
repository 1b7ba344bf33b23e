"""The pretrained generic tower: nsfwjs's files read as data, weights set by name, the soft
colour histogram, partial unfreezing. Synthetic files in the package's own format keep it fast."""

import base64

import keras
import numpy as np
import pytest

from training import imagenet_mobilenet as im
from training.imagenet_mobilenet import (WeightsError, build_backbone, colour_centres, parse_manifest, parse_shard,
                                         read_weights, set_trainable_blocks, soft_colour_histogram)
from training.towers import build_tower


def _manifest_text(entries):
    """A model.min.js fragment written the way the package writes its manifest."""
    body = ",".join(f'{{name:"{name}",shape:[{",".join(map(str, shape))}],dtype:"float32",'
                    f'quantization:{{min:{low!r},scale:{scale!r},dtype:"uint8"}}}}' for name, shape, low, scale in entries)
    return f'a.exports={{modelTopology:{{}},weightsManifest:[{{paths:["group1-shard1of1"],weights:[{body}]}}]}}'


def _shard_text(data):
    return '!function(e){e.exports="' + base64.b64encode(data).decode() + '"},{}]},{},[1])(1)});'


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A 30x30 and a 3-value tensor in the package's format, and their stored bytes."""
    monkeypatch.setattr(im, "WEIGHT_COUNT", 2)
    entries = [("a/kernel", (30, 30), -1.0, 0.5), ("b/bias", (3,), 0.25, 0.001)]
    raw = bytes(range(256)) * 3 + bytes(132) + bytes([0, 10, 255])
    model, shard = tmp_path / "model.min.js", tmp_path / "shard.min.js"
    model.write_text(_manifest_text(entries))
    shard.write_text(_shard_text(raw))
    return model, shard, raw


def test_weights_are_read_as_data_and_dequantized(files):
    model, shard, raw = files
    entries = parse_manifest(model.read_text())
    assert [e["name"] for e in entries] == ["a/kernel", "b/bias"] and entries[1]["quantization"]["scale"] == 0.001
    weights = read_weights(model, shard)
    assert weights["a/kernel"].shape == (30, 30) and weights["a/kernel"][0, 3] == pytest.approx(3 * 0.5 - 1.0)
    np.testing.assert_allclose(weights["b/bias"], [0.25, 0.26, 0.25 + 0.255], rtol=1e-6)


def test_a_shard_of_the_wrong_size_or_without_weights_is_refused(files, tmp_path):
    model, _, raw = files
    longer = tmp_path / "longer.min.js"
    longer.write_text(_shard_text(raw + bytes(10)))
    with pytest.raises(WeightsError, match="oversized"):
        read_weights(model, longer)
    with pytest.raises(WeightsError, match="found 0 base64 strings"):
        parse_shard('e.exports="c2hvcnQ="')  # too short to be a weights string


def test_a_manifest_with_the_wrong_number_of_entries_is_refused():
    with pytest.raises(WeightsError, match="found 1 weight entries, expected 266"):
        parse_manifest(_manifest_text([("a/kernel", (1, 2), -1.0, 0.5)]))


def _weights_like(shape=(64, 64, 3), seed=0):
    """Random weights under the manifest's names for every backbone variable."""
    rng = np.random.default_rng(seed)
    base = keras.applications.MobileNetV2(input_shape=shape, include_top=False, weights=None)
    weights = {}
    for layer in base.layers:
        for variable in layer.weights:
            name = im._stored_name(layer, variable)
            value = rng.normal(0, 0.1, variable.shape).astype(np.float32)
            weights[name] = np.abs(value) + 0.5 if name.endswith("moving_variance") else value
    return weights


def test_every_backbone_variable_is_set_by_its_manifest_name():
    weights = _weights_like()
    backbone = build_backbone(weights, (64, 64, 3))
    assert [tuple(t.shape[1:]) for t in backbone.outputs] == [(4, 4, 64), (4, 4, 96), (2, 2, 160), (2, 2, 320)]
    depthwise = backbone.get_layer("block_3_depthwise")
    np.testing.assert_array_equal(depthwise.get_weights()[0], weights["block_3_depthwise/depthwise_kernel"])
    del weights["block_5_project_BN/gamma"]
    with pytest.raises(WeightsError, match="block_5_project_BN/gamma is missing"):
        build_backbone(weights, (64, 64, 3))


def test_trainable_blocks_open_only_the_last_ones():
    backbone = build_backbone(_weights_like(), (64, 64, 3))
    set_trainable_blocks(backbone, 2)
    open_layers = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert open_layers and all(name.startswith(("block_15_", "block_16_")) for name in open_layers)
    set_trainable_blocks(backbone, 0)
    assert not backbone.trainable_weights
    with pytest.raises(ValueError, match="0..17"):
        set_trainable_blocks(backbone, 18)


def test_the_soft_colour_histogram_puts_a_colour_in_its_own_bin():
    image = keras.Input((8, 8, 3))
    model = keras.Model(image, soft_colour_histogram(image, 4))
    red = np.zeros((1, 8, 8, 3), np.float32)
    red[..., 0] = 0.9
    histogram = model.predict(red, verbose=0)[0]
    centres = colour_centres(3, 4)
    assert histogram.shape == (64,) and histogram.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(centres[histogram.argmax()], [0.875, 0.125, 0.125]) and histogram.max() > 0.5


def test_the_tower_takes_grey_and_colour_thumbnails_and_gives_unit_embeddings(monkeypatch):
    monkeypatch.setattr(im, "fetch", lambda: (None, None))
    monkeypatch.setattr(im, "read_weights", lambda *_: _weights_like((48, 48, 3)))
    rng = np.random.default_rng(0)
    for shape in ((48, 48, 3), (48, 48, 1)):
        tower = build_tower("imagenet-mobilenetv2", shape, 16)
        embeddings = tower.predict(rng.random((2,) + shape).astype(np.float32), verbose=0)
        assert embeddings.shape == (2, 16) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
        blank = tower.predict(np.zeros((1,) + shape, np.float32), verbose=0)
        assert np.isfinite(blank).all()
        assert {w.path.split("/")[0] for w in tower.trainable_weights} == {"embedding"}  # the backbone is frozen
        assert tower.get_layer("upsample").output.shape == (None, 160, 160, 3)  # thumbnails: for the backbone
