"""Flask application factory: settings, extensions, blueprints, JSON errors.

Nothing here touches TensorFlow or the model at import or in `create_app`: gunicorn's
master may build the app, and TensorFlow work before the fork hangs the workers. The
scorer is loaded in the worker, by the gunicorn hook (`post_worker_init`) or on first use.
"""

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from verifier import settings
from verifier.core.acquisition import NoFaceFound
from verifier.core.errors import VerifierError
from verifier.web import auth, calibration_view, metrics, openapi, page, search, subjects, verify
from verifier.web.extensions import Enrollment, Scorers

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "request_too_large", 415: "unsupported_media_type"}


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
    """Build the Flask app. `config` (dict or object) overrides the settings' defaults and environment."""
    app = Flask(__name__)
    app.config.update(settings.load(config))
    app.json.sort_keys = False
    app.logger.setLevel(logging.INFO)
    Scorers(app)
    Enrollment(app)
    app.register_blueprint(verify.bp)
    app.register_blueprint(subjects.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(calibration_view.bp)
    app.register_blueprint(page.bp)
    register_error_handlers(app)
    metrics.init_app(app)
    auth.init_app(app)  # after metrics: a refused request is still timed and counted
    return app
