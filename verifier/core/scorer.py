"""The pair scorer: decoded images -> embeddings (fast path) -> distances -> calibrated decisions.

Used by the HTTP API, the CLI and enrollment. Loading picks the fastest path that agrees
with model.keras:

1. the bundle's TFLite export (`model.tflite`, see `verifier.core.fastpath`), read from the
   export cache (never the bundle) and built and cached first if it is missing, stale or
   does not match its hash (kept in memory if the cache is read-only), checked on probe
   inputs against model.keras's embeddings;
2. otherwise, or if that check fails, the fixed-signature `tf.function` Embedder.

`model.predict` is never used. Decisions come only from calibration.json: an uncalibrated
bundle embeds but does not decide (503), rather than inventing a threshold.
"""

import contextlib
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from verifier.core import fastpath
from verifier.core.acquisition import acquire_all, detector_for
from verifier.core.bundle import load_bundle, load_model
from verifier.core.decisions import probability_same, rule_of_three, threshold_at_fmr
from verifier.core.distances import pair_distances
from verifier.core.embedder import Embedder
from verifier.core.errors import VerifierError
from verifier.core.timing import Stopwatch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tflite", "tf.function")
MAX_THREADS = 4  # a scorer's threads for one request's images, at most


def default_threads():
    """One thread per CPU this process may use, at most MAX_THREADS."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class Rule:
    """A checked decision rule: "same" when distance <= threshold; confidence from the calibrated map."""

    threshold: float
    policy: str
    confidence: dict

    def decide(self, distances):
        """Distances -> [{distance, decision, confidence, threshold, policy}]."""
        distances = np.asarray(distances, dtype=np.float64).reshape(-1)
        confidence = np.atleast_1d(probability_same(distances, self.confidence))
        return [{"distance": float(d), "decision": "same" if d <= self.threshold else "different",
                 "confidence": float(p), "threshold": self.threshold, "policy": self.policy}
                for d, p in zip(distances, confidence)]


class Scorer:
    """A bundle ready to embed images and turn distances into decisions."""

    def __init__(self, bundle, embedder, *, backend, agreement=None, threads=None):
        self.bundle = bundle
        self.embedder = embedder
        self.backend = backend
        self.agreement = agreement  # max abs embedding difference vs its reference (None: is model.keras)
        self.threads = threads or default_threads()
        self.warm = False
        self._pool, self._pool_pid, self._pool_lock, self._active = None, None, threading.Lock(), 0

    @classmethod
    def from_bundle(cls, path, *, backend="auto", write_export=True, cache_dir=None, threads=None):
        """Load a bundle directory (its hashes checked); `backend` "auto" prefers TFLite, else tf.function;
        `threads` for one request's images (default: one per CPU, at most MAX_THREADS).

        A bundle that ships its serving model (int8) is served by it, or not at all: its
        calibration was measured on that model, not on model.keras. Other bundles' exports are
        read from, and written to, `cache_dir` (default: `fastpath.cache_root()`).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        bundle = load_bundle(path, with_model=False)
        shipped = "serving" in bundle.meta
        if backend != "tf.function":
            try:
                return cls._tflite(bundle, write_export, cache_dir, threads)
            except Exception as exc:  # any failure of the fast path leaves the safe one
                if backend == "tflite" or shipped:
                    raise
                log.warning("TFLite fast path unavailable for bundle %s (%s); using tf.function",
                            bundle.bundle_id, exc)
        elif shipped:
            log.warning("bundle %s is calibrated on its %s; tf.function serves model.keras, whose "
                        "distances differ slightly from it", bundle.bundle_id, bundle.meta["serving"]["file"])
        if bundle.model is None:
            bundle.model = load_model(bundle.path, bundle.meta)
        return cls(bundle, Embedder.from_bundle(bundle), backend="tf.function", threads=threads)

    @classmethod
    def _tflite(cls, bundle, write_export, cache_dir, threads):
        export = fastpath.shipped_export(bundle)
        reference = "its recorded embeddings"
        if export is None:
            export = cls._cached_export(bundle, write_export, cache_dir)
            reference = "model.keras"
        data, record = export
        embedder = fastpath.TFLiteEmbedder(data)
        diff = fastpath.check_agreement(embedder, record, bundle.profile)
        tolerance = record.get("tolerance", fastpath.TOLERANCE)
        if not diff <= tolerance:
            raise VerifierError(f"TFLite model disagrees with {reference}: max abs embedding "
                                f"difference {diff:.3g} > {tolerance:g}", code="export_mismatch")
        log.info("fast path %s agrees with %s: max abs embedding difference %.3g on %d random inputs + a blank",
                 embedder.name, reference, diff, record["probe_count"])
        return cls(bundle, embedder, backend=embedder.name, agreement=diff, threads=threads)

    @staticmethod
    def _cached_export(bundle, write_export, cache_dir):
        """(tflite bytes, record): the cached export of model.keras, built (and cached) when missing."""
        export = fastpath.read_export(bundle, cache_dir)
        if export is None:
            bundle.model = load_model(bundle.path, bundle.meta)
            export = fastpath.build_export(bundle)
            if write_export:
                out = fastpath.export_dir(bundle, cache_dir)
                try:
                    fastpath.write_export(out, *export)
                except OSError as exc:
                    log.warning("could not write %s into %s (%s); keeping it in memory",
                                fastpath.TFLITE_FILE, out, exc)
        return export

    # -- what the bundle is ----------------------------------------------------------------

    @property
    def bundle_id(self):
        return self.bundle.bundle_id

    @property
    def profile(self):
        return self.bundle.profile

    @property
    def metric(self):
        return self.bundle.metric

    @property
    def calibration(self):
        return self.bundle.calibration

    @property
    def calibration_id(self):
        return self.calibration["calibration_id"] if self.calibration else None

    def describe(self):
        """The identifying fields every answer carries."""
        return {"model": self.bundle_id, "calibration_id": self.calibration_id,
                "profile": self.profile.name, "metric": self.metric, "backend": self.backend}

    # -- embedding ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _at_work(self):
        """Count one request of this process at work on the scorer, for `_map` to see."""
        with self._pool_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._pool_lock:
                self._active -= 1

    def _map(self, function, items):
        """[function(item) for item in items], on the scorer's own threads when there are several
        items and no other request of this process is at work: LiteRT lets go of the GIL while a
        model runs, so an idle worker detects and embeds a pair's two images at once, while a busy
        one keeps to one thread a request (threads would only contend for the same cores). The
        pool is made in the process that uses it, never inherited across a fork."""
        items = list(items)
        with self._pool_lock:
            parallel = self._active <= 1 and self.threads > 1 and len(items) > 1
            if parallel and self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="scorer")
                self._pool_pid = os.getpid()
        if parallel:
            return list(self._pool.map(function, items))
        return [function(item) for item in items]

    def acquire(self, images, names=None):
        """Decoded uint8 images -> `Acquired` model inputs (faces detected and aligned where the
        profile asks); 422 `no_face` naming the first image without a face."""
        return acquire_all(images, self.profile, names, map_images=self._map)

    def embed(self, images, names=None):
        """Decoded uint8 images -> (N, D) float32 embeddings, with the bundle's preprocessing."""
        with self._at_work():
            return self.embed_inputs(self.acquire(images, names).inputs)

    def embed_inputs(self, inputs):
        """Preprocessed model inputs -> (N, D) float32 embeddings."""
        if len(inputs) == 0:
            return np.zeros((0, int(self.bundle.meta["embedding_size"])), np.float32)
        chunks = np.array_split(inputs, min(self.threads, len(inputs)))
        return np.concatenate(self._map(self.embedder.embed_batch, chunks)).astype(np.float32, copy=False)

    def warm_up(self):
        """Run the sizes requests use (one pair, a small batch) once, so the first request is not slow."""
        probes = fastpath.probe_inputs(self.profile, count=8)
        if self.profile.detector:
            detector_for(self.profile).detect(np.full((120, 100, 3), 128, np.uint8))
        self.embedder.embed_batch(probes[:2])
        self.embedder.embed_batch(probes)
        self.warm = True
        return self

    # -- decisions ---------------------------------------------------------------------------

    def rule(self, *, threshold=None, target_fmr=None, section=None):
        """The decision rule: the calibration's, or the request's override; the one check of both options.

        `section` is a calibration dict with "policy", "threshold", "confidence" and
        "operating_points" (default: calibration.json's top level; enrollment passes its
        "fusion" section). Raises 503 `not_calibrated` without one, 400 for an option that is
        not a finite number, 422 for an override that the calibration cannot honour.
        """
        section = self._section(section)
        if threshold is not None and target_fmr is not None:
            raise VerifierError("give threshold or target_fmr, not both", code="conflicting_options", status=422)
        if threshold is not None:
            value = _number(threshold, "threshold")
            if value < 0:
                raise VerifierError(f"threshold must be a distance >= 0, got {value:g}",
                                    code="invalid_threshold", status=422)
            return Rule(value, f"request:threshold={value:g}", section["confidence"])
        if target_fmr is not None:
            target = _number(target_fmr, "target_fmr")
            return Rule(self._threshold_for_fmr(section, target), f"request:target_fmr={target:g}",
                        section["confidence"])
        return Rule(float(section["threshold"]), section["policy"], section["confidence"])

    def decide(self, distances, *, threshold=None, target_fmr=None, section=None):
        """Distances -> [{distance, decision, confidence, threshold, policy}] (accept distance <= threshold)."""
        return self.rule(threshold=threshold, target_fmr=target_fmr, section=section).decide(distances)

    def verify(self, images_a, images_b, *, threshold=None, target_fmr=None, names=None):
        """Pairs of decoded images -> (decisions, timings in ms); options are checked before embedding.

        `names` (one per image of images_a + images_b) name an image without a face in the
        422. Where the profile detects faces, each decision carries the two faces found.
        """
        rule = self.rule(threshold=threshold, target_fmr=target_fmr)
        clock = Stopwatch()
        with self._at_work():
            acquired = self.acquire(list(images_a) + list(images_b), names)
            clock.lap("acquire")
            embeddings = self.embed_inputs(acquired.inputs)
            clock.lap("embed")
        n = len(images_a)
        decisions = rule.decide(pair_distances(embeddings[:n], embeddings[n:], self.metric))
        clock.lap("decide")
        if self.profile.detector:
            for i, decision in enumerate(decisions):
                decision["faces"] = [acquired.faces[i].to_dict(), acquired.faces[n + i].to_dict()]
        return decisions, clock.laps

    def _section(self, section):
        section = self.calibration if section is None else section
        if section is None:
            raise VerifierError(f"bundle {self.bundle_id} is not calibrated (no calibration.json): run "
                                "calibration on it before verifying; no threshold is made up",
                                code="not_calibrated", status=503)
        return section

    @staticmethod
    def _threshold_for_fmr(section, target):
        if not 0 < target < 1:
            raise VerifierError(f"target_fmr must lie strictly between 0 and 1, got {target:g}",
                                code="unsupported_target_fmr", status=422)
        points = section.get("operating_points")
        if not points or not points.get("fmr"):
            raise VerifierError("this calibration has no operating points, so target_fmr cannot be "
                                "looked up; give a threshold instead", code="unsupported_target_fmr", status=422)
        finest = _finest_supported_fmr(points["fmr"])
        value = threshold_at_fmr(points, target)
        if value is None or target < finest:
            raise VerifierError(f"target_fmr={target:g} is finer than the calibration supports: its dev "
                                f"impostor comparisons support targets >= {finest:.3g} (rule of three)",
                                code="unsupported_target_fmr", status=422)
        return value


def _finest_supported_fmr(fmr):
    """3/N for N impostor comparisons, N read off the curve's smallest non-zero FMR step (1/N)."""
    positive = np.asarray(fmr, dtype=np.float64)
    positive = positive[positive > 0]
    return rule_of_three(round(1.0 / float(positive.min()))) if len(positive) else 1.0


def _number(value, name):
    """A finite float from a JSON number or form text, else a 400 naming the option."""
    try:
        number = float(None if isinstance(value, bool) else value)
    except (TypeError, ValueError):
        raise VerifierError(f"{name} must be a number, got {value!r}", code="invalid_option") from None
    if not math.isfinite(number):
        raise VerifierError(f"{name} must be a finite number, got {value!r}", code="invalid_option")
    return number

