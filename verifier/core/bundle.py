"""The model bundle: a directory with the embedding tower and everything needed to use it.

    model.keras        the tower (the twin is the same weights applied twice)
    bundle.json        format version, profile, embedding size, metric, recipe, the sha256 of
                       every other file it describes ("files"), and the bundle id: a hash of
                       all of that, so a changed model.keras means another bundle id
    calibration.json   added by calibration: threshold, policy, confidence map, metrics, the
                       bundle id it was fitted for and its own content hash (calibration_id)
    model.int8.tflite  optional (`add_serving_model`): an int8 serving model, described in
                       bundle.json's "serving"; when present, serving and calibration both
                       embed through it, so decisions are calibrated on the model that serves

Loading checks every hash: a file changed after saving is a `BundleError` (503 when
serving), never a model quietly compared against templates of another. Loading is safe
(JSON and Keras `safe_mode`, no pickle) and every failure is a `BundleError` saying what is
wrong, never a traceback from deep inside Keras. Format 1 (no file hashes) is upgraded in
place by `upgrade_bundle` (`python -m verifier export`), which gives it a new bundle id.
"""

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from verifier.core import distances
from verifier.core.errors import BundleError
from verifier.core.files import file_sha256, replace_with, write_bytes_atomic, write_json_atomic
from verifier.core.profiles import Profile

FORMAT_VERSION = 2
MODEL_FILE = "model.keras"
META_FILE = "bundle.json"
CALIBRATION_FILE = "calibration.json"
SERVING_FILE = "model.int8.tflite"
METRICS = tuple(distances.METRICS)
REQUIRED_KEYS = ("format_version", "bundle_id", "profile", "embedding_size", "metric")


def _digest(*chunks):
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()[:16]


def _canonical(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def derive_bundle_id(meta):
    """The bundle id: a hash of bundle.json's content (file hashes included) without the id itself."""
    return _digest(_canonical({key: value for key, value in meta.items() if key != "bundle_id"}))


def _sealed_calibration(calibration, bundle_id):
    """`calibration` tagged with `bundle_id` and its content hash as calibration_id."""
    data = dict(calibration, bundle_id=bundle_id)
    data.pop("calibration_id", None)
    data["calibration_id"] = _digest(_canonical(data))
    return data


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
        "files": {MODEL_FILE: file_sha256(model_path)},
    }
    meta["bundle_id"] = derive_bundle_id(meta)
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
    if meta["format_version"] == 1:
        raise BundleError(f"bundle format 1 records no file hashes ({path}): upgrade it in place with "
                          f"`python -m verifier export --bundle {path}` (it gets a new bundle id)")
    if meta["format_version"] != FORMAT_VERSION:
        raise BundleError(f"bundle format {meta['format_version']} is not supported "
                          f"(this verifier reads format {FORMAT_VERSION}); retrain or upgrade")
    if meta["metric"] not in METRICS:
        raise BundleError(f"bundle metric {meta['metric']!r} is not one of {', '.join(METRICS)}")
    files = meta.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise BundleError(f"bundle.json lacks the sha256 of {MODEL_FILE} ({path})")
    serving = meta.get("serving")
    if serving is not None and not (isinstance(serving, dict) and serving.get("file") in files):
        raise BundleError(f"bundle.json's serving model is not one of the files it lists ({path})")
    if derive_bundle_id(meta) != meta["bundle_id"]:
        raise BundleError(f"bundle.json was edited: its bundle_id {meta['bundle_id']} does not match its "
                          f"content ({derive_bundle_id(meta)}); save or upgrade the bundle again")
    return meta


def check_files(bundle_dir, meta):
    """Every file bundle.json lists is present and has its recorded sha256 (BundleError if not)."""
    for name, recorded in meta["files"].items():
        path = Path(bundle_dir) / name
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            raise BundleError(f"{name} is missing: {path}") from None
        except OSError as exc:
            raise BundleError(f"{name} cannot be read ({path}): {exc.strerror}") from None
        if actual != recorded:
            raise BundleError(f"{name} does not match the sha256 in bundle.json: it was changed or replaced "
                              f"after bundle {meta['bundle_id']} was saved ({path})")


def add_serving_model(bundle_dir, data, record):
    """Ship `data` (TFLite bytes) in the bundle as its serving model, described by `record`.

    The file is listed with its sha256 and bundle.json gets `serving` (the record, with the
    file's name) and a new bundle id; the old calibration is removed, since it was measured on
    another model. Returns the new bundle id.
    """
    path = Path(bundle_dir)
    meta = read_meta(path)
    check_files(path, meta)
    write_bytes_atomic(path / SERVING_FILE, data)
    new = dict(meta, files=dict(meta["files"], **{SERVING_FILE: hashlib.sha256(data).hexdigest()}),
               serving=dict(record, file=SERVING_FILE))
    new["bundle_id"] = derive_bundle_id(new)
    (path / CALIBRATION_FILE).unlink(missing_ok=True)
    write_json_atomic(path / META_FILE, new)
    return new["bundle_id"]


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
    data = _sealed_calibration(calibration, read_meta(bundle_dir)["bundle_id"])
    write_json_atomic(Path(bundle_dir) / CALIBRATION_FILE, data)
    return data["calibration_id"]


def upgrade_bundle(bundle_dir):
    """Upgrade a format-1 bundle in place (file hashes, a new id, calibration re-tagged); no retraining.

    Returns (old id, new id), or None when the bundle is already current. The old id is checked
    against model.keras first, so only the model it was made with is sealed.
    """
    path = Path(bundle_dir)
    meta = _read_json(path / META_FILE, "bundle.json")
    if meta.get("format_version") != 1:
        return None
    old_id = meta.get("bundle_id")
    try:
        model_bytes = (path / MODEL_FILE).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path / MODEL_FILE}: {exc.strerror}") from None
    if _digest(model_bytes, _canonical({k: v for k, v in meta.items() if k != "bundle_id"})) != old_id:
        raise BundleError(f"model.keras or bundle.json changed since bundle {old_id} was saved ({path}): "
                          "not upgrading it; retrain or restore the original files")
    new = dict(meta, format_version=FORMAT_VERSION, files={MODEL_FILE: hashlib.sha256(model_bytes).hexdigest()})
    new["bundle_id"] = derive_bundle_id(new)
    calibration = read_calibration(path)
    if calibration is not None and calibration["bundle_id"] in (old_id, new["bundle_id"]):
        write_json_atomic(path / CALIBRATION_FILE, _sealed_calibration(calibration, new["bundle_id"]))
    write_json_atomic(path / META_FILE, new)  # last: a rerun after a crash starts over
    return old_id, new["bundle_id"]


def load_model(bundle_dir, meta):
    """The Keras tower, loaded with safe_mode and checked against bundle.json."""
    import keras

    from verifier.core.layers import custom_objects

    path = Path(bundle_dir) / MODEL_FILE
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True, custom_objects=custom_objects())
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
    """Read a bundle directory and check its hashes; `with_model=False` skips TensorFlow entirely."""
    path = Path(bundle_dir)
    meta = read_meta(path)
    check_files(path, meta)
    bundle = Bundle(path=path, meta=meta, calibration=read_calibration(path))
    if bundle.calibration_stale:
        raise BundleError(f"calibration.json belongs to bundle {bundle.calibration['bundle_id']}, "
                          f"not {bundle.bundle_id}: recalibrate")
    if bundle.calibration is not None and \
            _sealed_calibration(bundle.calibration, bundle.bundle_id) != bundle.calibration:
        raise BundleError("calibration.json was edited after it was written (its calibration_id does not "
                          "match its content): recalibrate")
    if with_model:
        bundle.model = load_model(path, meta)
    return bundle
