"""The app's extensions: the worker's scorer and its enrollment store, each made on first use.

Both are per process: gunicorn builds the app in each worker after the fork, and nothing
here loads a model or opens a database in `init_app`, so the master stays free of both.
Blueprints reach them through the accessors (`get_scorer`, `get_store`, `get_service`).
"""

import atexit
import threading

from flask import current_app

from verifier.core.errors import VerifierError
from verifier.enrollment.service import EnrollmentService
from verifier.enrollment.store import open_store

SCORER = "verifier.scorer"
ENROLLMENT = "verifier.enrollment"


class LazyScorer:
    """Loads the app's scorer once, under a lock, and remembers a load failure for /readyz."""

    def __init__(self, app=None):
        self.bundle_path = None
        self.scorer = None
        self.error = None
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app):
        self.bundle_path = app.config["VERIFIER_BUNDLE"]
        app.extensions[SCORER] = self

    def get(self):
        """The warm scorer, loading it on first use; a bundle that cannot load raises its 503."""
        if self.scorer is None:
            with self._lock:
                if self.scorer is None:
                    from verifier.core.scorer import Scorer  # TensorFlow stays out of gunicorn's master

                    try:
                        self.scorer = Scorer.from_bundle(self.bundle_path).warm_up()
                        self.error = None
                    except VerifierError as exc:
                        self.error = exc
                        raise
        return self.scorer


class Enrollment:
    """The app's enrollment store (opened and migrated on first use) and its service; closed at exit."""

    def __init__(self, app=None):
        self.url = None
        self.keep_images = False
        self.create = True
        self.store = None
        self.service = None
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

    def get_service(self, scorer):
        if self.service is None:
            store = self.get_store()
            with self._lock:
                if self.service is None:
                    self.service = EnrollmentService(store, scorer)
        return self.service

    def close(self):
        """Close the store (this thread's connection; others close with their threads)."""
        with self._lock:
            store, self.store, self.service = self.store, None, None
        if store is not None:
            store.close()


def scorer_holder(app=None):
    """The app's LazyScorer, to ask whether the scorer is loaded without loading it."""
    return (app or current_app).extensions[SCORER]


def get_scorer():
    """The current app's scorer: loaded and warm, or a VerifierError (503)."""
    return scorer_holder().get()


def enrollment(app=None):
    """The app's Enrollment extension."""
    return (app or current_app).extensions[ENROLLMENT]


def get_store():
    """The current app's store, opened (and migrated) on first use in this process."""
    return enrollment().get_store()


def get_service():
    """The current app's EnrollmentService (its store + the worker's scorer)."""
    return enrollment().get_service(get_scorer())
