"""gunicorn settings for the verifier (`gunicorn -c verifier/web/gunicorn_conf.py 'verifier.web.app:create_app()'`).

Environment: PORT (8000), VERIFIER_HOST (127.0.0.1), VERIFIER_WORKERS (CPU count, at most 8),
VERIFIER_THREADS (2), VERIFIER_TIMEOUT (60 s), VERIFIER_ACCESS_LOG (a path or "-"; off by
default), VERIFIER_METRICS_DIR (the workers' shared Prometheus directory: made fresh per start
when unset, emptied of old workers' files when set), VERIFIER_MAX_REQUESTS (1000; 0 turns it
off) and VERIFIER_MAX_REQUESTS_JITTER (100): a worker is replaced after that many requests
plus a random 0..jitter, so a slow leak cannot grow without bound and the workers do not all
restart at once. Command-line flags win.

The app is not preloaded: the master never imports TensorFlow or the model (TensorFlow
work before the fork hangs the workers). Each worker builds the app after the fork and
loads and warms its scorer in `post_worker_init`, before it accepts a request, so the
first request is not slow and /readyz is true as soon as a worker answers.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn import util

bind = f"{os.environ.get('VERIFIER_HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("VERIFIER_WORKERS", min(8, os.cpu_count() or 1)))
threads = int(os.environ.get("VERIFIER_THREADS", 2))
worker_class = "gthread"  # keep-alive connections; a thread per in-flight request
timeout = int(os.environ.get("VERIFIER_TIMEOUT", 60))
max_requests = int(os.environ.get("VERIFIER_MAX_REQUESTS", 1000))
max_requests_jitter = int(os.environ.get("VERIFIER_MAX_REQUESTS_JITTER", 100))
graceful_timeout = 20
keepalive = 5
preload_app = False
accesslog = os.environ.get("VERIFIER_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("VERIFIER_LOG_LEVEL", "info")
# One BLAS thread a worker: workers and threads already use the cores; nested BLAS threads thrash.
raw_env = ["TF_CPP_MIN_LOG_LEVEL=2", "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"]
control_socket_disable = True  # gunicorn 27's control socket has one fixed path per user: two services would clash


GUNICORN_ERROR_CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
                        431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def json_error(sock, status_int, reason, mesg):
    """gunicorn's own answers (malformed HTTP, request line or headers too long) in the API's JSON shape.

    gunicorn writes these itself, before the app sees a request, as an HTML page; every
    worker calls `gunicorn.util.write_error`, which this replaces (set here, in the master,
    so that every forked worker inherits it).
    """
    body = json.dumps({"error": {"code": GUNICORN_ERROR_CODES.get(status_int, "http_error"),
                                 "message": f"{reason}: {mesg}" if mesg else reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


util.write_error = json_error


def on_starting(server):
    """Give the workers one empty Prometheus multiprocess directory (before any imports prometheus_client).

    prometheus_client picks multiprocess mode when it is imported, from PROMETHEUS_MULTIPROC_DIR;
    the master never imports it before this, and the workers inherit the variable at the fork.
    """
    directory = os.environ.get("VERIFIER_METRICS_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):  # a previous start's counts
            stale.unlink()
    else:
        directory = server.verifier_metrics_dir = tempfile.mkdtemp(prefix="verifier-metrics-")
    os.environ["VERIFIER_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def post_worker_init(worker):
    """Load and warm this worker's scorers, one per modality (after the fork, before serving), and say how it went."""
    from verifier.core.errors import VerifierError
    from verifier.web.extensions import scorers

    app = worker.wsgi
    for name, holder in scorers(app).holders.items():
        try:
            scorer = holder.get()
        except VerifierError as exc:  # the worker still serves: /readyz and that modality's routes answer 503
            worker.log.error("worker %s: modality %s: bundle not loaded: %s", worker.pid, name, exc.message)
            continue
        agreement = ("" if scorer.agreement is None
                     else f", max abs embedding difference vs model.keras {scorer.agreement:.3g}")
        worker.log.info("worker %s: modality %s: bundle %s (calibration %s) ready on %s%s", worker.pid, name,
                        scorer.bundle_id, scorer.calibration_id, scorer.backend, agreement)


def child_exit(server, worker):
    """Drop an exited worker's live gauges (its counters stay in the sum, so they never go backwards)."""
    from prometheus_client import multiprocess  # not at the top: only after on_starting set the directory

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this start made."""
    directory = getattr(server, "verifier_metrics_dir", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
