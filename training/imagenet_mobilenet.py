"""A general-purpose pretrained backbone for products and other photos: MobileNetV2's ImageNet
weights, as shipped (uint8-quantized) in the npm package nsfwjs@4.4.0 (MIT).

nsfwjs trained its classifier from keras.applications.MobileNetV2(weights="imagenet") with
blocks 0-10 frozen (its model.json says `trainable: false` for every one of their layers), so
those blocks hold the ImageNet weights exactly, up to the quantization; blocks 11-16 were
fine-tuned on nsfwjs's five categories of pictures. The package's JS files are read as text
(the weights manifest by a pattern, the weights as one base64 string): nothing of the
package runs.

The backbone is keras.applications.MobileNetV2 (built-in layers) with those weights set by
layer name; `TAPS` are the block outputs whose spatial averages the tower's head reads.
"""

import base64
import re

import keras
import numpy as np

from training.npm_weights import CACHE_ROOT, NPM_TIMEOUT_S, NpmFiles, WeightsError, read_tfjs_weights

PACKAGE = NpmFiles(
    spec="nsfwjs@4.4.0",
    tarball_sha256="585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382",
    member_dir="package/dist/models/mobilenet_v2/",
    file_sha256={
        "model.min.js": "c32f104fd562b08cdff5ed69dfe1209643afa47e792fb12751d2949aa61a397a",
        "group1-shard1of1.min.js": "ef2e0a63f7d2c4960b37b024b669313f65d3c45cd59e9042636c55b39de53517",
    })
MODEL_FILE, SHARD_FILE = "model.min.js", "group1-shard1of1.min.js"
DEFAULT_CACHE_DIR = CACHE_ROOT / "nsfwjs-mobilenet-v2"
WEIGHT_COUNT = 266  # entries in the package's manifest (the backbone's 260 and the classifier's 6)
IMAGENET_BLOCKS = 11  # blocks 0-10 kept their ImageNet weights in the package
TAPS = ("block_6_project_BN", "block_10_project_BN", "block_13_project_BN", "block_16_project_BN")
BLOCKS = ("expanded_conv",) + tuple(f"block_{i}" for i in range(1, 17))

_ENTRY = re.compile(r'\{name:"([^"]+)",shape:\[([0-9,]*)\],dtype:"float32",'
                    r'quantization:\{min:([-+.0-9eE]+),scale:([-+.0-9eE]+),dtype:"uint8"\}\}')
_BASE64 = re.compile(r'"([A-Za-z0-9+/]{1000,}={0,2})"')


def provenance():
    """Where the weights came from and under which terms, for bundle.json's recipe."""
    return {"network": "MobileNetV2 1.0 (Sandler et al. 2018), keras.applications layout",
            "trained_on": "ImageNet-1k (blocks 0-10, as Keras ships them, Apache-2.0); blocks 11-16 "
                          "fine-tuned by nsfwjs on its five picture categories",
            "package": PACKAGE.spec, "package_licence": "MIT", "tarball_sha256": PACKAGE.tarball_sha256,
            "files": dict(PACKAGE.file_sha256), "fetched_with": f"npm pack {PACKAGE.spec}"}


def fetch(cache_dir=DEFAULT_CACHE_DIR, timeout=NPM_TIMEOUT_S):
    """(model.min.js path, shard path) in cache_dir, from `npm pack` unless cached and intact."""
    paths = PACKAGE.fetch(cache_dir, timeout)
    return paths[MODEL_FILE], paths[SHARD_FILE]


def parse_manifest(text):
    """The tfjs weight entries written in model.min.js, in their order."""
    entries = [{"name": name, "shape": [int(n) for n in shape.split(",") if n], "dtype": "float32",
                "quantization": {"min": float(low), "scale": float(scale), "dtype": "uint8"}}
               for name, shape, low, scale in _ENTRY.findall(text)]
    if len(entries) != WEIGHT_COUNT:
        raise WeightsError(f"nsfwjs model file: found {len(entries)} weight entries, expected {WEIGHT_COUNT}")
    return entries


def parse_shard(text):
    """The weight bytes of a shard file: its one long base64 string."""
    found = _BASE64.findall(text)
    if len(found) != 1:
        raise WeightsError(f"nsfwjs shard file: found {len(found)} base64 strings, expected 1")
    return base64.b64decode(found[0], validate=True)


def read_weights(model_path, shard_path):
    """Weight name -> dequantized float32 array."""
    try:
        model_text, shard_text = model_path.read_text(), shard_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"cannot read the nsfwjs model files: {exc}") from None
    return read_tfjs_weights(parse_manifest(model_text), parse_shard(shard_text), "nsfwjs", shard_path)


def _stored_name(layer, variable):
    """The manifest's name for one Keras variable (Keras 3 names a depthwise kernel `kernel`)."""
    suffix = variable.path.rsplit("/", 1)[-1]
    if isinstance(layer, keras.layers.DepthwiseConv2D) and suffix == "kernel":
        suffix = "depthwise_kernel"
    return f"{layer.name}/{suffix}"


def build_backbone(weights, input_shape):
    """keras.Model "mobilenetv2_taps": (H, W, 3) image in [-1, 1] -> the `TAPS` feature maps."""
    base = keras.applications.MobileNetV2(input_shape=tuple(input_shape), include_top=False, weights=None)
    for layer in base.layers:
        if not layer.weights:
            continue
        names = [_stored_name(layer, v) for v in layer.weights]
        missing = [n for n in names if n not in weights]
        if missing:
            raise WeightsError(f"nsfwjs weights: {missing[0]} is missing")
        layer.set_weights([weights[n] for n in names])
    return keras.Model(base.input, [base.get_layer(tap).output for tap in TAPS], name="mobilenetv2_taps")


def set_trainable_blocks(backbone, trainable_blocks):
    """Freeze the backbone but for its last `trainable_blocks` inverted-residual blocks."""
    if not 0 <= trainable_blocks <= len(BLOCKS):
        raise ValueError(f"trainable stages must lie in 0..{len(BLOCKS)}, got {trainable_blocks}")
    open_blocks = BLOCKS[len(BLOCKS) - trainable_blocks:] if trainable_blocks else ()
    for layer in backbone.layers:
        layer.trainable = any(layer.name == b or layer.name.startswith(b + "_") for b in open_blocks)


def colour_centres(channels, bins):
    """The soft histogram's bin centres: a bins^channels grid over [0, 1]^channels."""
    axis = (np.arange(bins) + 0.5) / bins
    grid = np.stack(np.meshgrid(*[axis] * channels, indexing="ij"), axis=-1)
    return grid.reshape(-1, channels).astype(np.float32)


def soft_colour_histogram(image, bins, side=None, name="colour"):
    """A differentiable colour histogram of a [0, 1] image, in built-in layers: each pixel's
    softmax over -beta * |pixel - centre|^2 (a 1x1 convolution, since |pixel|^2 is the same
    for every centre), averaged over the image.

    side: average-pool the image first to about side x side pixels, so that bins^3 memberships
    a pixel stay cheap (at 40 px the histogram's EER on grocery moved by 0.3 points, see the
    README's Products section); None keeps every pixel.
    """
    channels = image.shape[-1]
    pool = max(1, int(image.shape[1]) // side) if side else 1
    if pool > 1:
        image = keras.layers.AveragePooling2D(pool, name=f"{name}_pool")(image)
    centres = colour_centres(channels, bins)
    beta = 2.0 * bins ** 2  # a soft bin about as wide as a hard one
    conv = keras.layers.Conv2D(len(centres), 1, trainable=False, name=f"{name}_bins")
    logits = conv(image)
    conv.set_weights([(2 * beta * centres.T)[None, None], -beta * (centres ** 2).sum(axis=1)])
    memberships = keras.layers.Softmax(axis=-1, name=f"{name}_softmax")(logits)
    return keras.layers.GlobalAveragePooling2D(name=f"{name}_histogram")(memberships)
