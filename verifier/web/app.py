"""Flask application factory: configuration, the lazily loaded scorer, blueprints, JSON errors.

Nothing here touches TensorFlow or the model at import or in `create_app`: gunicorn's
master may build the app, and TensorFlow work before the fork hangs the workers. The
scorer is loaded in the worker, by the gunicorn hook (`post_worker_init`) or on first use.
"""

import logging
import os
import threading

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from verifier.core import images
from verifier.core.acquisition import NoFaceFound
from verifier.core.errors import VerifierError
from verifier.web import metrics

# Config key -> (environment variable, default, type). Environment overrides the default;
# the `config` given to create_app overrides both.
SETTINGS = {
    "VERIFIER_BUNDLE": ("VERIFIER_BUNDLE", "bundles/default", str),
    "MAX_CONTENT_LENGTH": ("VERIFIER_MAX_CONTENT_LENGTH", 24 * 1024 * 1024, int),  # whole request
    "MAX_IMAGE_BYTES": ("VERIFIER_MAX_IMAGE_BYTES", images.MAX_BYTES, int),  # one image
    "MAX_PIXELS": ("VERIFIER_MAX_PIXELS", images.MAX_PIXELS, int),  # one decoded image
    "MAX_BATCH_PAIRS": ("VERIFIER_MAX_BATCH_PAIRS", 64, int),
    "METRICS_DIR": ("VERIFIER_METRICS_DIR", None, str),  # shared by gunicorn workers
    "DATABASE_URL": ("DATABASE_URL", None, str),  # enrollment store; None: its default
}

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "request_too_large", 415: "unsupported_media_type"}


def load_config(config=None):
    """Defaults, then environment variables, then the explicit `config` (dict or object)."""
    values = {}
    for key, (env, default, kind) in SETTINGS.items():
        raw = os.environ.get(env)
        try:
            values[key] = kind(raw) if raw not in (None, "") else default
        except ValueError:
            raise ValueError(f"environment variable {env}={raw!r} is not a valid {kind.__name__}") from None
    if config is not None:
        items = config.items() if isinstance(config, dict) else (
            (key, getattr(config, key)) for key in dir(config) if key.isupper())
        values.update(items)
    return values


class ScorerHolder:
    """Loads the worker's scorer once, under a lock, and remembers a load failure's message."""

    def __init__(self, bundle_path):
        self.bundle_path = bundle_path
        self.scorer = None
        self.error = None
        self._lock = threading.Lock()

    def get(self):
        """The warm scorer, loading it on first use; a bundle that cannot load raises its 503."""
        if self.scorer is None:
            with self._lock:
                if self.scorer is None:
                    from verifier.core.scorer import Scorer  # the heavy imports stay out of the master

                    try:
                        self.scorer = Scorer.from_bundle(self.bundle_path).warm_up()
                        self.error = None
                    except VerifierError as exc:
                        self.error = exc
                        raise
        return self.scorer


def get_scorer():
    """The current app's scorer (for blueprints): loaded and warm, or a VerifierError (503)."""
    return current_app.extensions["verifier.scorer"].get()


def scorer_holder(app=None):
    """The app's ScorerHolder, to ask whether the scorer is loaded without loading it."""
    return (app or current_app).extensions["verifier.scorer"]


def _error(status, code, message):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def register_error_handlers(app):
    """Every failure answers JSON {"error": {"code", "message"}}: no HTML page, no traceback."""

    @app.errorhandler(VerifierError)
    def verifier_error(exc):
        if isinstance(exc, NoFaceFound):
            metrics.record_failure_to_acquire()
        return _error(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.code == 405:
            message = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(exc.valid_methods or [])}"
        elif exc.code == 413:
            message = (f"request body is larger than the limit of "
                       f"{current_app.config['MAX_CONTENT_LENGTH']} bytes")
        else:
            message = exc.description
        return _error(exc.code, HTTP_CODES.get(exc.code, "http_error"), message)

    @app.errorhandler(Exception)
    def internal_error(exc):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "internal server error; the server log has the details")


def create_app(config=None):
    """Build the Flask app. `config` (dict or object) overrides defaults and environment."""
    app = Flask(__name__)
    app.config.update(load_config(config))
    app.json.sort_keys = False
    app.logger.setLevel(logging.INFO)
    app.extensions["verifier.scorer"] = ScorerHolder(app.config["VERIFIER_BUNDLE"])

    from verifier.web import subjects, verify

    app.register_blueprint(verify.bp)
    app.register_blueprint(subjects.bp)
    register_error_handlers(app)
    metrics.init_app(app)
    return app
