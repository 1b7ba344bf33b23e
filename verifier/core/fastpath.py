"""The serving fast path: a TFLite export of model.keras, checked against it, run per thread.

`build_export` (needs TensorFlow) freezes the tower's fixed-signature concrete function,
converts it with `tf.lite.TFLiteConverter`, runs model.keras and the export on a few
seeded probe inputs, and `write_export` writes into a cache directory of its own per bundle
id (`export_dir`: $VERIFIER_CACHE_DIR, else ~/.cache/verifier, then exports/<bundle id>/),
never into the bundle, which serving only reads:

    model.tflite        the converted tower
    model.tflite.json   bundle id, model.keras and model.tflite hashes, the probe seed,
                        model.keras's embeddings of the probes, and the max difference

A serving worker then needs no TensorFlow at all when LiteRT (`ai_edge_litert`) is
installed: it runs the probes through the export and compares them with model.keras's
recorded embeddings, which the model.keras hash ties to the bundle. An export whose
model.tflite does not hash to its record (substituted, half-copied) is never served: it is
rebuilt. Without LiteRT it falls back to `tf.lite.Interpreter`, which works the same but
imports TensorFlow.

A bundle may instead ship its own serving model (an int8 quantization, see
`training.quantize`): `shipped_export` reads it from the bundle, whose hashes cover it, and
its record in bundle.json holds its own embeddings of the probes. It is checked against
those, within the record's tolerance, since it is not meant to match model.keras to 1e-4.

A conversion that goes wrong does not fail loudly: exporting the un-frozen function
converts "fine" and then reads uninitialised variables (NaN embeddings). The agreement
check is what catches such a thing.
"""

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from verifier.core.bundle import MODEL_FILE, load_model
from verifier.core.files import write_bytes_atomic, write_json_atomic
from verifier.core.errors import BundleError

TFLITE_FILE = "model.tflite"
RECORD_FILE = "model.tflite.json"
TOLERANCE = 1e-4  # max abs embedding difference accepted between the export and model.keras
PROBE_COUNT = 4
PROBE_SEED = 0
BATCH_SIZE = 64
CACHE_ENV = "VERIFIER_CACHE_DIR"

log = logging.getLogger(__name__)


def probe_inputs(profile, count=PROBE_COUNT, seed=PROBE_SEED):
    """Seeded model inputs for the agreement check (uniform draws: stable across numpy versions),
    and last a blank one (all zeros: an empty page or a flat image), where an export's
    normalisation of a zero vector can give NaN although every random draw agrees."""
    rng = np.random.default_rng(seed)
    draws = (rng.random((count,) + profile.input_shape) * 4.0 - 2.0).astype(np.float32)
    return np.concatenate([draws, np.zeros((1,) + profile.input_shape, np.float32)])


def cache_root():
    """Where exports are cached: $VERIFIER_CACHE_DIR, else $XDG_CACHE_HOME/verifier or ~/.cache/verifier."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "verifier"


def export_dir(bundle, cache_dir=None):
    """The directory of `bundle`'s export: one per bundle id, so exports of two models never mix."""
    return Path(cache_dir or cache_root()) / "exports" / bundle.bundle_id


def max_difference(a, b):
    """Max abs difference of two embedding arrays; inf when either holds a NaN or shapes differ."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def converter(model, profile):
    """A `tf.lite.TFLiteConverter` of the tower's frozen fixed-signature concrete function."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((None,) + profile.input_shape, tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)


def convert(model, profile):
    """model.keras tower -> float32 TFLite flatbuffer bytes."""
    return converter(model, profile).convert()


def build_export(bundle):
    """(tflite bytes, record) for a loaded bundle; the record's max_abs_diff is measured here."""
    model = bundle.model if bundle.model is not None else load_model(bundle.path, bundle.meta)
    profile = bundle.profile
    data = convert(model, profile)
    probes = probe_inputs(profile)
    reference = np.asarray(model(probes, training=False), dtype=np.float32)
    record = {
        "bundle_id": bundle.bundle_id,
        "model_sha256": bundle.meta["files"][MODEL_FILE],  # checked against the file by load_bundle
        "tflite_sha256": hashlib.sha256(data).hexdigest(),
        "probe_seed": PROBE_SEED,
        "probe_count": PROBE_COUNT,
        "probe_blank": True,
        "reference": reference.tolist(),
        "max_abs_diff": max_difference(TFLiteEmbedder(data).embed_batch(probes), reference),
        "tolerance": TOLERANCE,
        "converter": _tf_version(),
    }
    return data, record


def write_export(out_dir, data, record):
    """Write model.tflite then its record into `out_dir` (made if missing); returns the .tflite path.

    The record goes last, and names the .tflite's hash, so a reader never pairs old and new.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / TFLITE_FILE, data)
    write_json_atomic(out / RECORD_FILE, record)
    return out / TFLITE_FILE


def read_export(bundle, cache_dir=None):
    """(tflite bytes, record) when `bundle`'s cache holds a current, intact export, else None."""
    path = export_dir(bundle, cache_dir)
    try:
        record = json.loads((path / RECORD_FILE).read_text())
        data = (path / TFLITE_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and record.get("bundle_id") == bundle.bundle_id
            and record.get("model_sha256") == bundle.meta["files"][MODEL_FILE]
            and record.get("probe_blank")):  # checked before blank probes were: rebuilt and checked again
        return None
    if record.get("tflite_sha256") != hashlib.sha256(data).hexdigest():
        log.warning("%s does not match the sha256 in %s (substituted or damaged): not served, rebuilding",
                    path / TFLITE_FILE, RECORD_FILE)
        return None
    return data, record


def shipped_export(bundle):
    """(tflite bytes, record) of the serving model the bundle ships (bundle.json "serving"), else None.

    The file's sha256 is in bundle.json's "files", checked when the bundle is loaded.
    """
    record = bundle.meta.get("serving")
    if record is None:
        return None
    path = Path(bundle.path) / record["file"]
    try:
        return path.read_bytes(), record
    except OSError as exc:
        raise BundleError(f"{record['file']} cannot be read ({path}): {exc.strerror}") from None


def check_agreement(embedder, record, profile):
    """Max abs difference between the export's embeddings of the probes and the record's reference
    (model.keras's for an export of it, the model's own for a shipped serving model)."""
    probes = probe_inputs(profile, record["probe_count"], record["probe_seed"])
    return max_difference(embedder.embed_batch(probes), record["reference"])


def interpreter_class():
    """LiteRT's interpreter when installed (no TensorFlow import), else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        Interpreter = tf.lite.Interpreter
    return Interpreter


def _tf_version():
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


class TFLiteEmbedder:
    """Preprocessed batches -> embeddings through a TFLite model, one interpreter per thread.

    An interpreter is not thread-safe, so each gunicorn thread gets its own (single-threaded:
    workers, not intra-op threads, use the cores). Its input is resized only when the batch
    size changes, so the usual two-image request costs one `invoke`.
    """

    def __init__(self, model_content, batch_size=BATCH_SIZE, interpreter=None):
        self.model_content = model_content
        self.batch_size = batch_size
        self.interpreter_cls = interpreter or interpreter_class()
        self._local = threading.local()
        self.name = f"tflite ({self.interpreter_cls.__module__.split('.')[0]})"
        self._interpreter()  # fail here, at load time, on a broken flatbuffer

    def _interpreter(self):
        state = getattr(self._local, "state", None)
        if state is None:
            try:
                interp = self.interpreter_cls(model_content=self.model_content, num_threads=1)
                interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise BundleError(f"{TFLITE_FILE} could not be loaded: {exc}") from None
            state = self._local.state = {
                "interp": interp, "shape": None,
                "input": interp.get_input_details()[0]["index"],
                "output": interp.get_output_details()[0]["index"],
            }
        return state

    def _run(self, chunk):
        state = self._interpreter()
        interp = state["interp"]
        if state["shape"] != chunk.shape:
            interp.resize_tensor_input(state["input"], chunk.shape, strict=True)
            interp.allocate_tensors()
            state["shape"] = chunk.shape
        interp.set_tensor(state["input"], chunk)
        interp.invoke()
        return interp.get_tensor(state["output"]).copy()

    def embed_batch(self, batch):
        """(N, H, W, C) preprocessed float32 -> (N, D) float32 embeddings."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = [self._run(batch[i:i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
