"""Shared fixtures: synthetic image folders and tiny bundles built without training."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tests.synthetic import write_folder
from verifier.core.bundle import save_bundle, write_calibration
from verifier.core.profiles import get_profile

pytest_plugins = ["tests.subject_fixtures"]  # store, scorer and fusion-calibrated bundle fixtures


@pytest.fixture
def image_folder(tmp_path):
    """ROOT/<identity>/<n>.png: 6 synthetic identities x 6 images, 56x46 grey."""
    return write_folder(tmp_path / "faces")


def tiny_tower(profile, embedding_size=8, seed=0):
    """An untrained, L2-normalised tower: enough to exercise every code path quickly."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(profile.input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # a bias, so that a blank image embeds to a unit vector too (a zero vector has no direction)
    x = keras.layers.Dense(embedding_size, bias_initializer=keras.initializers.RandomNormal(seed=seed))(x)
    outputs = keras.layers.UnitNormalization()(x)
    return keras.Model(inputs, outputs, name="tiny_tower")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """An uncalibrated face-profile bundle with a random tiny tower."""
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    profile = get_profile("face-small")
    save_bundle(path, tiny_tower(profile), profile=profile, metric="euclidean",
                recipe={"loss": "none", "seed": 0, "dataset": {"name": "synthetic"},
                        "train_identities": [], "validation_identities": [], "holdout_identities": []})
    return path


@pytest.fixture(scope="session")
def calibrated_bundle(tmp_path_factory, tiny_bundle):
    """The tiny bundle plus a hand-written calibration.json (fixture data, not a real fit)."""
    import shutil

    path = tmp_path_factory.mktemp("bundle") / "calibrated"
    shutil.copytree(tiny_bundle, path)
    distances = np.linspace(0.0, 2.0, 41)
    write_calibration(path, {
        "policy": "eer", "threshold": 0.5, "metric": "euclidean",
        "confidence": {"kind": "logistic", "a": -10.0, "b": 5.0, "prior": 0.5, "train_prior": 0.5},
        "operating_points": {"distance": distances.tolist(),
                             "fmr": np.clip(distances / 2.0, 0, 1).tolist(),
                             "fnmr": np.clip(1 - distances, 0, 1).tolist()},
    })
    return path
