"""Prometheus metrics, written by hand: request counts, a latency histogram, decisions.

Each gunicorn worker counts in its own memory (threads share it under a lock). So that
`/metrics` shows the whole service and not whichever worker answered, every worker
also writes its counters to `METRICS_DIR/worker-<pid>.json` (atomically, at most every
`FLUSH_SECONDS` and whenever it serves /metrics), and /metrics adds up all the files in
the directory. Files of exited workers stay, so counters never go backwards; the gunicorn
config makes a fresh directory per service start. Other workers' counts can lag by up to
`FLUSH_SECONDS`. Without METRICS_DIR (one process, tests) only the local counts are shown.
"""

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

from flask import g, request

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_SECONDS = 0.5
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Registry:
    """One worker's counters, keyed by label tuples so that merging is plain addition."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = Counter()  # (route, method, status) -> count
        self.latency_buckets = Counter()  # (route, bucket index) -> count (non-cumulative)
        self.latency_sum = Counter()  # route -> seconds
        self.latency_count = Counter()  # route -> count
        self.decisions = Counter()  # (route, decision) -> count
        self.failures_to_acquire = Counter()  # route -> images in which no face was found
        self.last_flush = 0.0

    def observe(self, route, method, status, seconds):
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        with self.lock:
            self.requests[(route, method, str(status))] += 1
            self.latency_buckets[(route, index)] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def count_decisions(self, route, decisions):
        with self.lock:
            for decision in decisions:
                self.decisions[(route, decision)] += 1

    def count_failure_to_acquire(self, route):
        with self.lock:
            self.failures_to_acquire[route] += 1

    def snapshot(self):
        """The counters as JSON-ready lists of [labels..., value]."""
        with self.lock:
            return {
                "requests": [[*key, n] for key, n in self.requests.items()],
                "latency_buckets": [[*key, n] for key, n in self.latency_buckets.items()],
                "latency_sum": [[key, n] for key, n in self.latency_sum.items()],
                "latency_count": [[key, n] for key, n in self.latency_count.items()],
                "decisions": [[*key, n] for key, n in self.decisions.items()],
                "failures_to_acquire": [[key, n] for key, n in self.failures_to_acquire.items()],
            }


REGISTRY = Registry()


def flush(directory, force=False):
    """Write this worker's snapshot to the shared directory (rate-limited unless forced)."""
    now = time.monotonic()
    if directory is None or (not force and now - REGISTRY.last_flush < FLUSH_SECONDS):
        return
    REGISTRY.last_flush = now
    path = Path(directory) / f"worker-{os.getpid()}.json"
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(REGISTRY.snapshot()))
        os.replace(tmp, path)
    except OSError:
        pass  # metrics must never fail a request; the next flush tries again


def collect(directory):
    """Sum of every worker's snapshot (or just this process's without a directory)."""
    if directory is None:
        snapshots = [REGISTRY.snapshot()]
    else:
        flush(directory, force=True)
        snapshots = []
        for path in Path(directory).glob("worker-*.json"):
            try:
                snapshots.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a file being replaced right now; its counts show next scrape
    total = {name: Counter() for name in ("requests", "latency_buckets", "latency_sum",
                                           "latency_count", "decisions", "failures_to_acquire")}
    for snapshot in snapshots:
        for name, rows in snapshot.items():
            for *key, value in rows:
                total[name][tuple(key) if len(key) > 1 else key[0]] += value
    return total


def _labels(**labels):
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def render(directory, info=None):
    """The Prometheus text exposition of the summed counters (and an info line if given)."""
    total = collect(directory)
    lines = ["# HELP verifier_requests_total HTTP requests by route, method and status.",
             "# TYPE verifier_requests_total counter"]
    for (route, method, status), n in sorted(total["requests"].items()):
        lines.append(f"verifier_requests_total{_labels(route=route, method=method, status=status)} {n}")
    lines += ["# HELP verifier_request_duration_seconds Request latency in the worker, by route.",
              "# TYPE verifier_request_duration_seconds histogram"]
    for route in sorted(total["latency_count"]):
        cumulative = 0
        for i, bound in enumerate(BUCKETS + (float("inf"),)):
            cumulative += total["latency_buckets"].get((route, i), 0)
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f"verifier_request_duration_seconds_bucket{_labels(route=route, le=le)} {cumulative}")
        lines.append(f"verifier_request_duration_seconds_sum{_labels(route=route)} {total['latency_sum'][route]:.6f}")
        lines.append(f"verifier_request_duration_seconds_count{_labels(route=route)} {total['latency_count'][route]}")
    lines += ["# HELP verifier_decisions_total Verification decisions by route and outcome.",
              "# TYPE verifier_decisions_total counter"]
    for (route, decision), n in sorted(total["decisions"].items()):
        lines.append(f"verifier_decisions_total{_labels(route=route, decision=decision)} {n}")
    lines += ["# HELP verifier_failures_to_acquire_total Requests refused because no face was found, by route.",
              "# TYPE verifier_failures_to_acquire_total counter"]
    for route, n in sorted(total["failures_to_acquire"].items()):
        lines.append(f"verifier_failures_to_acquire_total{_labels(route=route)} {n}")
    if info is not None:
        lines += ["# HELP verifier_model_info The bundle and calibration this worker serves.",
                  "# TYPE verifier_model_info gauge",
                  f"verifier_model_info{_labels(**info)} 1"]
    return "\n".join(lines) + "\n"


def record_decisions(decisions):
    """Count decisions ("same"/"different") for the current request's route; for any blueprint."""
    REGISTRY.count_decisions(_route(), (d["decision"] for d in decisions))


def record_failure_to_acquire():
    """Count a request refused for want of a face (422 no_face) on the current route."""
    REGISTRY.count_failure_to_acquire(_route())


def _route():
    """The matched URL rule (bounded label values), not the raw path."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def init_app(app):
    """Time and count every request of `app`."""

    @app.before_request
    def start_timer():
        g.metrics_start = time.perf_counter()

    @app.after_request
    def count_request(response):
        start = g.pop("metrics_start", None)
        if start is not None:
            REGISTRY.observe(_route(), request.method, response.status_code, time.perf_counter() - start)
            flush(app.config["METRICS_DIR"])
        return response
