"""The model bundle: a directory with the embedding tower and everything needed to use it.

    model.keras        the tower (the twin is the same weights applied twice)
    bundle.json        format version, bundle id, profile, embedding size, metric, recipe
    calibration.json   added by calibration: threshold, policy, confidence map, metrics

Loading is safe (JSON and Keras `safe_mode`, no pickle) and every failure is a
`BundleError` saying what is wrong, never a traceback from deep inside Keras.
"""

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from verifier.core import distances
from verifier.core.errors import BundleError
from verifier.core.files import replace_with, write_json_atomic
from verifier.core.profiles import Profile

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
META_FILE = "bundle.json"
CALIBRATION_FILE = "calibration.json"
METRICS = tuple(distances.METRICS)
REQUIRED_KEYS = ("format_version", "bundle_id", "profile", "embedding_size", "metric")


def _digest(*chunks):
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()[:16]


def _canonical(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _read_json(path, what):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise BundleError(f"{what} is missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{what} is corrupt ({path}): {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{what} is corrupt ({path}): expected a JSON object")
    return data


def library_versions():
    """Versions recorded in the bundle so a later mismatch can be explained."""
    import keras
    import numpy
    import tensorflow

    return {"python": platform.python_version(), "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__}


def save_bundle(out_dir, model, *, profile, metric, recipe):
    """Write model.keras and bundle.json into `out_dir`; returns the bundle id (a content hash)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    replace_with(model_path, model.save)
    (out / CALIBRATION_FILE).unlink(missing_ok=True)  # a new model invalidates any old calibration
    meta = {
        "format_version": FORMAT_VERSION,
        "profile": profile.to_dict(),
        "input_shape": list(profile.input_shape),
        "embedding_size": int(model.output_shape[-1]),
        "metric": metric,
        "recipe": recipe,
        "versions": library_versions(),
    }
    meta["bundle_id"] = _digest(model_path.read_bytes(), _canonical(meta))
    write_json_atomic(out / META_FILE, meta)
    return meta["bundle_id"]


def read_meta(bundle_dir):
    """bundle.json, checked for the keys and version this code understands (no TensorFlow)."""
    path = Path(bundle_dir)
    if not path.is_dir():
        raise BundleError(f"bundle directory not found: {path}")
    meta = _read_json(path / META_FILE, "bundle.json")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise BundleError(f"bundle.json lacks {', '.join(missing)} ({path})")
    if meta["format_version"] != FORMAT_VERSION:
        raise BundleError(f"bundle format {meta['format_version']} is not supported "
                          f"(this verifier reads format {FORMAT_VERSION}); retrain or upgrade")
    if meta["metric"] not in METRICS:
        raise BundleError(f"bundle metric {meta['metric']!r} is not one of {', '.join(METRICS)}")
    return meta


def read_calibration(bundle_dir):
    """calibration.json as a dict, or None when the bundle has not been calibrated."""
    path = Path(bundle_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    data = _read_json(path, "calibration.json")
    for key in ("calibration_id", "bundle_id", "threshold", "policy", "confidence"):
        if key not in data:
            raise BundleError(f"calibration.json lacks {key!r} ({path})")
    return data


def write_calibration(bundle_dir, calibration):
    """Store a calibration in the bundle with an id that hashes its content; returns the id."""
    meta = read_meta(bundle_dir)
    data = dict(calibration, bundle_id=meta["bundle_id"])
    data.pop("calibration_id", None)
    data["calibration_id"] = _digest(_canonical(data))
    write_json_atomic(Path(bundle_dir) / CALIBRATION_FILE, data)
    return data["calibration_id"]


def load_model(bundle_dir, meta):
    """The Keras tower, loaded with safe_mode and checked against bundle.json."""
    import keras

    path = Path(bundle_dir) / MODEL_FILE
    if not path.exists():
        raise BundleError(f"model.keras is missing: {path}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a broken archive
        raise BundleError(f"model.keras could not be loaded ({path}): {type(exc).__name__}: {exc}") from None
    if list(model.input_shape[1:]) != list(meta["input_shape"]):
        raise BundleError(f"model input {tuple(model.input_shape[1:])} does not match bundle.json "
                          f"input_shape {tuple(meta['input_shape'])}")
    if int(model.output_shape[-1]) != int(meta["embedding_size"]):
        raise BundleError("model embedding size does not match bundle.json")
    return model


@dataclass
class Bundle:
    """A loaded bundle: metadata, optional calibration and (when asked) the Keras tower."""

    path: Path
    meta: dict
    calibration: dict | None
    model: object = None

    @property
    def bundle_id(self):
        return self.meta["bundle_id"]

    @property
    def profile(self):
        return Profile.from_dict(self.meta["profile"])

    @property
    def metric(self):
        return self.meta["metric"]

    @property
    def calibration_stale(self):
        """True when calibration.json was made for another model than this one."""
        return self.calibration is not None and self.calibration["bundle_id"] != self.bundle_id


def load_bundle(bundle_dir, *, with_model=True):
    """Read a bundle directory; `with_model=False` skips TensorFlow entirely."""
    path = Path(bundle_dir)
    meta = read_meta(path)
    bundle = Bundle(path=path, meta=meta, calibration=read_calibration(path))
    if bundle.calibration_stale:
        raise BundleError(f"calibration.json belongs to bundle {bundle.calibration['bundle_id']}, "
                          f"not {bundle.bundle_id}: recalibrate")
    if with_model:
        bundle.model = load_model(path, meta)
    return bundle
