"""Hand-written Prometheus metrics: worker files add up, the histogram is cumulative, labels escape."""

import json

from verifier.web import metrics


def _worker_file(directory, pid, requests, buckets, decisions):
    snapshot = {"requests": requests, "latency_buckets": buckets,
                "latency_sum": [["/test/only", 0.5]], "latency_count": [["/test/only", sum(b[2] for b in buckets)]],
                "decisions": decisions}
    (directory / f"worker-{pid}.json").write_text(json.dumps(snapshot))


def test_counts_of_all_workers_are_summed(tmp_path):
    _worker_file(tmp_path, 1, [["/test/only", "POST", "200", 3]], [["/test/only", 0, 3]],
                 [["/test/only", "same", 2], ["/test/only", "different", 1]])
    _worker_file(tmp_path, 2, [["/test/only", "POST", "200", 4], ["/test/only", "POST", "415", 1]],
                 [["/test/only", 2, 5]], [["/test/only", "same", 4]])
    (tmp_path / "worker-3.json").write_text("{half a fi")  # being replaced right now: skipped
    text = metrics.render(str(tmp_path))
    assert 'verifier_requests_total{route="/test/only",method="POST",status="200"} 7' in text
    assert 'verifier_requests_total{route="/test/only",method="POST",status="415"} 1' in text
    assert 'verifier_decisions_total{route="/test/only",decision="same"} 6' in text
    assert 'verifier_request_duration_seconds_bucket{route="/test/only",le="0.001"} 3' in text
    assert 'verifier_request_duration_seconds_bucket{route="/test/only",le="0.005"} 8' in text
    assert 'verifier_request_duration_seconds_bucket{route="/test/only",le="+Inf"} 8' in text
    assert 'verifier_request_duration_seconds_count{route="/test/only"} 8' in text
    assert text.endswith("\n")


def test_this_worker_writes_its_own_file_when_scraped(tmp_path):
    metrics.REGISTRY.observe("/healthz", "GET", 200, 0.0001)
    text = metrics.render(str(tmp_path))
    assert list(tmp_path.glob("worker-*.json"))
    assert 'verifier_requests_total{route="/healthz",method="GET",status="200"}' in text


def test_label_values_are_escaped():
    assert metrics._labels(model='a"b\\c') == '{model="a\\"b\\\\c"}'
