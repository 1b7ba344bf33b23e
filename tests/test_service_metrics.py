"""Prometheus metrics at /metrics: counts, histogram buckets, model info, bounded labels, workers summed.

The default registry is global to the test process, so single-process checks compare a scrape
before with one after; the multiprocess check runs two spawned workers on a fresh directory.
"""

import itertools
import multiprocessing
import os
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from verifier.core.acquisition import NoFaceFound
from verifier.web import gunicorn_conf, metrics
from verifier.web.app import create_app
from verifier.web.extensions import scorer_holder

DESCRIBED = {"model": 'tiny"\\bundle', "calibration_id": None, "profile": "face-small", "metric": "euclidean",
             "backend": "tflite"}
MODEL_LABELS = {"modality": "face", **DESCRIBED, "calibration_id": ""}


def _app(tmp_path):
    """The service (its bundle missing: nothing here needs the model) plus two test routes."""
    app = create_app({"VERIFIER_BUNDLE": f"face={tmp_path / 'no-bundle'}"})

    @app.get("/test/decide")
    def decide():
        metrics.record_decisions([{"decision": "same"}, {"decision": "same"}, {"decision": "different"}])
        return "decided"

    @app.get("/test/no-face")
    def no_face():
        raise NoFaceFound("no face in image_b")

    return app


@pytest.fixture
def client(tmp_path):
    return _app(tmp_path).test_client()


def _scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return response.get_data(as_text=True)


def _value(text, name, **labels):
    """The value of sample `name` with exactly these labels in exposition `text` (0 if absent)."""
    wanted = {key: str(value) for key, value in labels.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    return 0.0


def _delta(before, after, name, **labels):
    return _value(after, name, **labels) - _value(before, name, **labels)


def test_requests_are_counted_by_route_method_and_status(client):
    before = _scrape(client)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    after = _scrape(client)
    assert _delta(before, after, "verifier_requests_total", route="/healthz", method="GET", status=200) == 3
    assert _delta(before, after, "verifier_requests_total", route="unmatched", method="GET", status=404) == 1
    assert _delta(before, after, "verifier_request_duration_seconds_count", route="/healthz") == 3
    assert _delta(before, after, "verifier_request_duration_seconds_bucket", route="/healthz", le="+Inf") == 3
    assert "# TYPE verifier_requests_total counter" in after
    assert "# TYPE verifier_request_duration_seconds histogram" in after
    assert "verifier_requests_created" not in after  # the same series as in multiprocess mode


def test_a_request_lands_in_its_latency_bucket(client, monkeypatch):
    before = _scrape(client)
    monkeypatch.setattr(metrics, "perf_counter", itertools.cycle([100.0, 100.003]).__next__)  # 3 ms a request
    assert client.get("/healthz").status_code == 200
    monkeypatch.undo()
    after = _scrape(client)
    buckets = {bound: _delta(before, after, "verifier_request_duration_seconds_bucket", route="/healthz", le=bound)
               for bound in ["0.001", "0.0025", "0.005", "0.01", "1.0", "10.0", "+Inf"]}
    assert buckets == {"0.001": 0, "0.0025": 0, "0.005": 1, "0.01": 1, "1.0": 1, "10.0": 1, "+Inf": 1}
    assert _delta(before, after, "verifier_request_duration_seconds_sum", route="/healthz") == pytest.approx(0.003)
    bounds = [sample.labels["le"] for family in text_string_to_metric_families(after)
              if family.name == "verifier_request_duration_seconds" for sample in family.samples
              if sample.name.endswith("_bucket") and sample.labels["route"] == "/healthz"]
    assert bounds == ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5",
                      "5.0", "10.0", "+Inf"]


def test_decisions_and_failures_to_acquire_are_counted_by_route(client):
    before = _scrape(client)
    assert client.get("/test/decide").status_code == 200
    assert client.get("/test/no-face").status_code == 422
    after = _scrape(client)
    assert _delta(before, after, "verifier_decisions_total", route="/test/decide", decision="same") == 2
    assert _delta(before, after, "verifier_decisions_total", route="/test/decide", decision="different") == 1
    assert _delta(before, after, "verifier_failures_to_acquire_total", route="/test/no-face") == 1
    assert _delta(before, after, "verifier_requests_total", route="/test/no-face", method="GET", status=422) == 1


def test_the_served_model_is_a_gauge_with_escaped_labels(tmp_path):
    app = _app(tmp_path)
    scorer_holder(app).scorer = SimpleNamespace(describe=lambda: DESCRIBED)
    text = _scrape(app.test_client())
    assert _value(text, "verifier_model_info", **MODEL_LABELS) == 1
    assert "# TYPE verifier_model_info gauge" in text
    assert 'model="tiny\\"\\\\bundle"' in text


def test_made_up_methods_share_one_series(client):
    before = _scrape(client)
    assert client.open("/v1/verify", method="FOO").status_code == 405
    assert client.open("/v1/verify", method="BREW").status_code == 405
    after = _scrape(client)
    assert _delta(before, after, "verifier_requests_total", route="unmatched", method="other", status=405) == 2
    assert "FOO" not in after and "BREW" not in after


def serve_as_worker(tmp_path, healthz_requests):
    """One worker process: a few requests, decisions and a scrape (which sets its model gauge)."""
    app = _app(tmp_path)
    scorer_holder(app).scorer = SimpleNamespace(describe=lambda: DESCRIBED)
    client = app.test_client()
    for _ in range(healthz_requests):
        assert client.get("/healthz").status_code == 200
    assert client.get("/test/decide").status_code == 200
    _scrape(client)


def test_multiprocess_mode_sums_the_workers_and_drops_dead_gauges(tmp_path, monkeypatch):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # as gunicorn_conf.on_starting sets it
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters import prometheus_client with it set
    workers = [spawn.Process(target=serve_as_worker, args=(tmp_path, n)) for n in (3, 4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    client = _app(tmp_path).test_client()  # this process counts in memory: only the workers' files are summed
    text = _scrape(client)
    assert _value(text, "verifier_requests_total", route="/healthz", method="GET", status=200) == 7
    assert _value(text, "verifier_request_duration_seconds_bucket", route="/healthz", le="+Inf") == 7
    assert _value(text, "verifier_decisions_total", route="/test/decide", decision="same") == 4
    assert _value(text, "verifier_model_info", **MODEL_LABELS) == 1  # livemax: one series, no pid label
    for worker in workers:
        gunicorn_conf.child_exit(None, worker)
    text = _scrape(client)
    assert "verifier_model_info{" not in text
    assert _value(text, "verifier_requests_total", route="/healthz", method="GET", status=200) == 7


def test_gunicorn_gives_each_start_an_empty_directory(tmp_path, monkeypatch):
    for name in ("VERIFIER_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores what on_starting sets
    server = SimpleNamespace()
    gunicorn_conf.on_starting(server)
    fresh = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert os.environ["VERIFIER_METRICS_DIR"] == fresh and os.listdir(fresh) == []
    gunicorn_conf.on_exit(server)
    assert not os.path.exists(fresh)

    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"a previous start")
    monkeypatch.setenv("VERIFIER_METRICS_DIR", str(given))
    server = SimpleNamespace()
    gunicorn_conf.on_starting(server)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given) and os.listdir(given) == []
    gunicorn_conf.on_exit(server)
    assert given.is_dir()  # the operator's directory stays
