"""An int8 serving model for a bundle, shipped inside it and calibrated as it serves.

    python -m training.quantize --bundle DIR --data PATH [--images 200] [--seed 0]

In float32 the pretrained face towers are most of a verification's time. Quantized after
training to int8 (weights per channel, activations per tensor, their ranges taken from
aligned images of the bundle's own training identities) XNNPACK runs them about twice as
fast. The flatbuffer goes into the bundle as model.int8.tflite, listed with its sha256, and
bundle.json's "serving" records how it was made and how far it is from model.keras; serving
and calibration then both embed through it. The bundle id changes, so calibrate after.

XNNPACK has no int8 PReLU: each one would cut the graph and run in a slow reference kernel.
For conversion, PReLU is rewritten as the same function of built-in ops,
prelu(x) = (1 + a) / 2 * x + (1 - a) / 2 * |x|, with |x| a leaky ReLU of slope -1.

A quantization whose embeddings drift from model.keras (mean cosine below MIN_MEAN_COSINE on
training-identity images it was not fitted on) is not shipped: the bundle stays float32.
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from verifier.core.acquisition import acquire_dataset, chip_profile
from verifier.core.bundle import add_serving_model, check_files, load_model, read_meta
from verifier.core.errors import DatasetError, VerifierError
from verifier.core.fastpath import PROBE_COUNT, PROBE_SEED, TFLiteEmbedder, converter, probe_inputs
from verifier.core.profiles import Profile, preprocess_batch

REPRESENTATIVE_IMAGES = 200  # images whose activations set the int8 ranges (as many again check them)
MIN_MEAN_COSINE = 0.98  # below this the int8 model is not shipped
TOLERANCE = 0.02  # max abs difference, at load, from the model's own recorded probe embeddings
QUANTIZATION = "post-training int8 (TFLite): weights per channel, activations per tensor"


def signed_prelu(alpha):
    """A Keras layer computing PReLU with per-channel `alpha` from ops XNNPACK runs in int8."""
    import keras

    class SignedPReLU(keras.layers.Layer):
        def call(self, x):
            a = keras.ops.convert_to_tensor(alpha, x.dtype)
            return (1.0 + a) / 2.0 * x + (1.0 - a) / 2.0 * keras.ops.leaky_relu(x, negative_slope=-1.0)

    return SignedPReLU()


def for_int8(model):
    """`model` with every PReLU (nested models too) replaced by `signed_prelu`; other layers shared."""
    import keras

    def swap(layer):
        if isinstance(layer, keras.Model):
            return for_int8(layer)
        if isinstance(layer, keras.layers.PReLU):
            return signed_prelu(np.asarray(layer.get_weights()[0], np.float32))
        return layer

    return keras.models.clone_model(model, clone_function=swap)


def convert_int8(model, profile, representative):
    """model.keras tower -> int8 TFLite bytes; activation ranges from `representative` inputs."""
    import tensorflow as tf

    int8 = converter(for_int8(model), profile)
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = lambda: ([x[None]] for x in np.asarray(representative, np.float32))
    return int8.convert()


def cosines(a, b):
    """Row-wise cosine similarity of two (N, D) arrays."""
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def quantize(model, profile, representative, check, source):
    """(int8 bytes, bundle.json "serving" record) for `model`; `check` are other inputs to compare on."""
    import tensorflow as tf

    data = convert_int8(model, profile, representative)
    embedder = TFLiteEmbedder(data)
    agreement = cosines(embedder.embed_batch(check), np.asarray(model(check, training=False)))
    record = {
        "format": "tflite", "quantization": QUANTIZATION, "converter": f"tensorflow {tf.__version__}",
        "representative": dict(source, images=len(representative)),
        "agreement_with_model_keras": {"images": len(check), "min_cosine": round(float(agreement.min()), 5),
                                       "mean_cosine": round(float(agreement.mean()), 5)},
        "probe_seed": PROBE_SEED, "probe_count": PROBE_COUNT, "probe_blank": True,
        "reference": embedder.embed_batch(probe_inputs(profile)).tolist(), "tolerance": TOLERANCE,
    }
    return data, record


def training_inputs(data, profile, names, count, seed):
    """(representative inputs, check inputs, their source): up to `count` each, seeded and disjoint,
    from the images of the identities `names`, detected and aligned as serving does."""
    names = [name for name in names if name in data.identities]
    if not names:
        raise DatasetError(f"none of the bundle's training identities is in {data.name}: quantize with the "
                           f"data it was trained on")
    subset = data.subset(names)
    rows = np.sort(np.random.default_rng([seed, 8]).permutation(len(subset))[:2 * count])
    sample = dataclasses.replace(subset, images=[subset.images[i] for i in rows], labels=subset.labels[rows],
                                 forged=subset.forged[rows])
    if profile.detector:
        sample, _ = acquire_dataset(sample, profile)
    inputs = preprocess_batch(sample.images, chip_profile(profile))
    if len(inputs) < 2:
        raise DatasetError(f"too few usable images of the training identities to quantize ({len(inputs)})")
    half = min(count, (len(inputs) + 1) // 2)
    return inputs[:half], inputs[half:], {"of": "training identities", "identities": len(names), "seed": seed}


def trained_identities(meta):
    """The identities the bundle's final model was trained on (the refit's, when it was refitted)."""
    recipe = meta.get("recipe", {})
    return (recipe.get("refit") or {}).get("identities") or recipe.get("train_identities") or []


def add_int8_serving(bundle_dir, representative, check, source, log=print):
    """Quantize the bundle's model and ship it as its serving model when it agrees with model.keras.

    Returns the new bundle id, or None when the int8 model drifted and was not shipped.
    """
    meta = read_meta(bundle_dir)
    check_files(bundle_dir, meta)
    data, record = quantize(load_model(bundle_dir, meta), Profile.from_dict(meta["profile"]), representative,
                            check, source)
    agreement = record["agreement_with_model_keras"]
    figures = (f"cosine with model.keras on {agreement['images']} other training images: mean "
               f"{agreement['mean_cosine']:.4f}, min {agreement['min_cosine']:.4f}")
    if agreement["mean_cosine"] < MIN_MEAN_COSINE:
        log(f"int8 serving model not shipped: {figures} (below {MIN_MEAN_COSINE}); the bundle stays float32")
        return None
    bundle_id = add_serving_model(bundle_dir, data, record)
    log(f"int8 serving model shipped in bundle {bundle_id} ({len(data) / 1e6:.1f} MB; {figures}); "
        f"calibrate it now: its id changed")
    return bundle_id


def build_parser():
    p = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle directory (changed in place: new id, no calibration)")
    p.add_argument("--data", required=True, help="the data the bundle was trained on (its training identities)")
    p.add_argument("--images", type=int, default=REPRESENTATIVE_IMAGES,
                   help="images that set the int8 ranges, and as many again to check it on")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None):
    from imagesets import load_dataset

    args = build_parser().parse_args(argv)
    try:
        meta = read_meta(args.bundle)
        representative, check, source = training_inputs(load_dataset(args.data), Profile.from_dict(meta["profile"]),
                                                        trained_identities(meta), args.images, args.seed)
        add_int8_serving(args.bundle, representative, check, source)
    except VerifierError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
