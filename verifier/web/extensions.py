"""The app's extensions: the worker's scorers (one per modality) and its enrollment store, each made on first use.

Both are per process: gunicorn builds the app in each worker after the fork, and nothing
here loads a model or opens a database in `init_app`, so the master stays free of both
(naming a bare bundle path's modality reads its bundle.json, JSON only). Blueprints reach
them through the accessors (`get_scorer(modality)`, `get_store`, `get_service(modality)`);
a modality of None is the default one, the first of VERIFIER_BUNDLE.
"""

import atexit
import threading

from flask import current_app

from verifier import settings
from verifier.core.errors import VerifierError
from verifier.enrollment.service import EnrollmentService
from verifier.enrollment.store import open_store

SCORERS = "verifier.scorers"
ENROLLMENT = "verifier.enrollment"


class UnknownModality(VerifierError):
    """A request names a modality this service does not serve (400)."""

    status = 400
    code = "unknown_modality"


class LazyScorer:
    """Loads one modality's scorer once, under a lock, and remembers a load failure for /readyz."""

    def __init__(self, bundle_path, modality=None, threads=None):
        self.bundle_path = bundle_path
        self.modality = modality
        self.threads = threads  # for one request's images; None: one per CPU (Scorer's default)
        self.scorer = None
        self.error = None
        self._lock = threading.Lock()

    def get(self):
        """The warm scorer, loading it on first use; a bundle that cannot load raises its 503."""
        if self.scorer is None:
            with self._lock:
                if self.scorer is None:
                    from verifier.core.scorer import Scorer  # TensorFlow stays out of gunicorn's master

                    try:
                        self.scorer = Scorer.from_bundle(self.bundle_path, threads=self.threads).warm_up()
                        self.error = None
                    except VerifierError as exc:
                        self.error = exc
                        raise
        return self.scorer

    def describe(self):
        """What every answer says about the model behind it: the modality, then Scorer.describe() (loads it)."""
        return {"modality": self.modality, **self.get().describe()}


class Scorers:
    """The app's modalities, in order (the first is the default), each with its LazyScorer."""

    def __init__(self, app=None):
        self.holders = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app):
        bundles = settings.bundles(str(app.config["VERIFIER_BUNDLE"]))
        threads = app.config["SCORER_THREADS"] or None
        self.holders = {name: LazyScorer(path, name, threads) for name, path in bundles.items()}
        app.extensions[SCORERS] = self

    @property
    def names(self):
        return list(self.holders)

    @property
    def default(self):
        return next(iter(self.holders))

    def name(self, modality=None):
        """The served modality `modality` names (None or "": the default); 400 `unknown_modality` if none."""
        if modality is None or modality == "":
            return self.default
        if isinstance(modality, str) and modality in self.holders:
            return modality
        raise UnknownModality(f"unknown modality {modality!r}: this service serves "
                              f"{', '.join(self.holders)} (default {self.default})")

    def holder(self, modality=None):
        return self.holders[self.name(modality)]


class Enrollment:
    """The app's enrollment store (opened and migrated on first use) and its service; closed at exit."""

    def __init__(self, app=None):
        self.url = None
        self.keep_images = False
        self.create = True
        self.store = None
        self.services = {}
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app):
        self.url = app.config["DATABASE_URL"]
        self.keep_images = bool(app.config["KEEP_IMAGES"])
        self.create = bool(app.config["CREATE_STORE"])
        app.extensions[ENROLLMENT] = self
        atexit.register(self.close)  # Flask has no shutdown hook; a gunicorn worker exits normally

    def get_store(self):
        if self.store is None:
            with self._lock:
                if self.store is None:
                    self.store = open_store(self.url, keep_images=self.keep_images, create=self.create)
        return self.store

    def get_service(self, scorer, modality=None, default_modality=None):
        """The EnrollmentService of one modality's scorer (made once per modality and scorer)."""
        service = self.services.get(modality)
        if service is None or service.scorer is not scorer:
            store = self.get_store()
            with self._lock:
                service = self.services.get(modality)
                if service is None or service.scorer is not scorer:
                    service = self.services[modality] = EnrollmentService(
                        store, scorer, modality=modality, default_modality=default_modality)
        return service

    def close(self):
        """Close the store (this thread's connection; others close with their threads)."""
        with self._lock:
            store, self.store, self.services = self.store, None, {}
        if store is not None:
            store.close()


def scorers(app=None):
    """The app's Scorers: its modalities and their LazyScorers."""
    return (app or current_app).extensions[SCORERS]


def scorer_holder(app=None, modality=None):
    """A modality's LazyScorer (default: the default modality's), to ask whether it is loaded without loading it."""
    return scorers(app).holder(modality)


def modality_name(modality=None):
    """The served modality `modality` names (None: the default); 400 `unknown_modality` otherwise."""
    return scorers().name(modality)


def default_modality():
    return scorers().default


def get_scorer(modality=None):
    """A modality's scorer (None: the default modality's): loaded and warm, or a VerifierError (503)."""
    return scorer_holder(modality=modality).get()


def describe(modality=None):
    """A modality's `LazyScorer.describe()` (None: the default modality's)."""
    return scorer_holder(modality=modality).describe()


def enrollment(app=None):
    """The app's Enrollment extension."""
    return (app or current_app).extensions[ENROLLMENT]


def get_store():
    """The current app's store, opened (and migrated) on first use in this process."""
    return enrollment().get_store()


def get_service(modality=None):
    """A modality's EnrollmentService (the store + that modality's scorer; None: the default modality)."""
    name = modality_name(modality)
    return enrollment().get_service(get_scorer(name), name, default_modality())
