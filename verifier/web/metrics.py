"""Prometheus metrics of the service (prometheus_client): requests, latency, decisions, model info.

Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` is set before any worker imports prometheus_client
(see gunicorn_conf.py), so every worker keeps its values in files there and `/metrics` adds up
all workers, whichever one answers. Without it (one process, tests) the default registry is served.
"""

import os
from time import perf_counter

import prometheus_client
from flask import Blueprint, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from verifier.enrollment.keys import READ
from verifier.web.auth import AUTH_ERRORS, SECURITY, SERVICE, needs_key
from verifier.web.extensions import scorers
from verifier.web.openapi import operation

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
MODEL_LABELS = ("modality", "model", "calibration_id", "profile", "metric", "backend")  # extensions.describe()'s

prometheus_client.disable_created_metrics()  # no *_created series: the same names as in multiprocess mode

REQUESTS = Counter("verifier_requests_total", "HTTP requests by route, method and status.",
                   ("route", "method", "status"))
LATENCY = Histogram("verifier_request_duration_seconds", "Request latency in the worker, by route.",
                    ("route",), buckets=BUCKETS)
DECISIONS = Counter("verifier_decisions_total", "Verification decisions by route and outcome.", ("route", "decision"))
FAILURES_TO_ACQUIRE = Counter("verifier_failures_to_acquire_total",
                              "Requests refused because no face was found, by route.", ("route",))
# livemax: one series per model served by a live worker (no pid label); a dead worker's is dropped.
MODEL_INFO = Gauge("verifier_model_info", "The bundle and calibration the workers serve, per modality.", MODEL_LABELS,
                   multiprocess_mode="livemax")

bp = Blueprint("prometheus", __name__)


@bp.get("/metrics")
@needs_key(READ, group=SERVICE)
@operation({"summary": "Prometheus metrics", "operationId": "metrics", "tags": ["service"],
            "description": "Needs a key (scope read) in X-API-Key once an API key was ever created, unless "
                           "VERIFIER_PROTECT=enrollment.", "security": SECURITY,
            "responses": {"200": {"description": "Prometheus text exposition format 0.0.4.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}, **AUTH_ERRORS}})
def metrics_text():
    """Prometheus text format 0.0.4: requests, latency histogram, decisions and model, summed over workers.

    The answering worker sets its model gauges here (one per loaded modality): the scorers may
    have loaded lazily, after init_app.
    """
    for holder in scorers().holders.values():
        if holder.scorer is not None:
            described = holder.describe()
            MODEL_INFO.labels(**{label: described.get(label) or "" for label in MODEL_LABELS}).set(1)
    return Response(prometheus_client.generate_latest(_registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _registry():
    """Every worker's values in multiprocess mode, else this process's default registry."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return prometheus_client.REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def record_decisions(decisions):
    """Count decisions ("same"/"different"/...) for the current request's route; for any blueprint."""
    route = _route()
    for decision in decisions:
        DECISIONS.labels(route=route, decision=decision["decision"]).inc()


def record_failure_to_acquire():
    """Count a request refused for want of a face (422 no_face) on the current route."""
    FAILURES_TO_ACQUIRE.labels(route=_route()).inc()


def _route():
    """The matched URL rule (bounded label values), not the raw path; "unmatched" for 404s and 405s."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _method():
    """The HTTP method, or "other" for a made-up one (each would otherwise be a new series)."""
    return request.method if request.method in HTTP_METHODS else "other"


def init_app(app):
    """Serve /metrics on `app`, and time and count every request."""
    app.register_blueprint(bp)

    @app.before_request
    def start_timer():
        g.metrics_start = perf_counter()

    @app.after_request
    def count_request(response):
        start = g.pop("metrics_start", None)
        if start is not None:
            route = _route()
            REQUESTS.labels(route=route, method=_method(), status=str(response.status_code)).inc()
            LATENCY.labels(route=route).observe(perf_counter() - start)
        return response
