"""The real service: `python -m verifier serve` (gunicorn, 2 workers) on a loopback port, over HTTP.

One server for the module (started once, killed at the end). Good requests, then every
kind of bad request: each must get its own clear 4xx JSON error, and the server must keep
answering afterwards.
"""

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tests.live_service import running_service
from tests.synthetic import identity_images, png_bytes

MAX_CONTENT_LENGTH = 1_000_000


@pytest.fixture(scope="module")
def service(calibrated_bundle, tmp_path_factory):
    """A real gunicorn (2 workers x 2 threads) serving the calibrated tiny bundle; killed at the end."""
    log_path = tmp_path_factory.mktemp("service") / "gunicorn.log"
    with running_service(calibrated_bundle, log_path,
                         env={"VERIFIER_MAX_CONTENT_LENGTH": str(MAX_CONTENT_LENGTH)}, timeout=90) as client:
        yield client


@pytest.fixture(scope="module")
def faces():
    images = identity_images(n_identities=2, per_identity=3)
    return {name: [png_bytes(image) for image in group] for name, group in images.items()}


@pytest.fixture(scope="module")
def calibration(calibrated_bundle):
    return json.loads((calibrated_bundle / "calibration.json").read_text())


# -- good requests -----------------------------------------------------------------------------

def test_same_image_twice_is_same_at_distance_zero(service, faces, calibration):
    status, body, _ = service.multipart("/v1/verify", [("image_a", faces["id00"][0]), ("image_b", faces["id00"][0])])
    assert status == 200, body
    assert body["decision"] == "same" and body["distance"] == pytest.approx(0.0, abs=1e-5)
    assert body["model"] == calibration["bundle_id"]
    assert body["calibration_id"] == calibration["calibration_id"]
    assert body["profile"] == "face-small" and body["backend"].startswith("tflite")
    assert set(body["timings_ms"]) == {"decode", "acquire", "embed", "decide", "total"}


def test_decision_agrees_with_the_calibration_threshold(service, faces, calibration):
    pairs = [(a, b) for a in faces["id00"] for b in faces["id00"][1:] + faces["id01"]]
    for a, b in pairs:
        status, body, _ = service.multipart("/v1/verify", [("image_a", a), ("image_b", b)])
        assert status == 200, body
        assert body["threshold"] == calibration["threshold"] and body["policy"] == calibration["policy"]
        assert body["decision"] == ("same" if body["distance"] <= calibration["threshold"] else "different")
        assert 0.0 <= body["confidence"] <= 1.0


def test_json_base64_gives_the_same_answer_as_multipart(service, faces):
    a, b = faces["id00"][0], faces["id01"][1]
    _, form, _ = service.multipart("/v1/verify", [("image_a", a), ("image_b", b)])
    status, body, _ = service.json("/v1/verify", {
        "image_a": base64.b64encode(a).decode(),
        "image_b": "data:image/png;base64," + base64.b64encode(b).decode()})
    assert status == 200, body
    assert body["distance"] == pytest.approx(form["distance"], abs=1e-6)
    assert body["decision"] == form["decision"]


def test_per_request_threshold_is_honoured(service, faces):
    fields = [("image_a", faces["id00"][0]), ("image_b", faces["id01"][0])]
    _, base, _ = service.multipart("/v1/verify", fields)
    distance = base["distance"]
    _, loose, _ = service.multipart("/v1/verify", fields + [("threshold", str(distance + 0.01))])
    assert loose["decision"] == "same" and loose["policy"] == f"request:threshold={distance + 0.01:g}"
    status, strict, _ = service.json("/v1/verify", {
        "image_a": base64.b64encode(fields[0][1]).decode(), "image_b": base64.b64encode(fields[1][1]).decode(),
        "threshold": distance - 0.01})
    assert status == 200 and strict["decision"] == "different" and strict["threshold"] == pytest.approx(distance - 0.01)
    _, query, _ = service.multipart(f"/v1/verify?threshold={distance + 0.01}", fields)
    assert query["decision"] == "same"


def test_per_request_target_fmr_is_honoured(service, faces):
    fields = [("image_a", faces["id00"][0]), ("image_b", faces["id01"][0])]
    status, body, _ = service.multipart("/v1/verify", fields + [("target_fmr", "0.1")])
    assert status == 200, body
    assert body["threshold"] == pytest.approx(0.2)  # fixture curve: fmr = distance / 2
    assert body["policy"] == "request:target_fmr=0.1"
    assert body["decision"] == ("same" if body["distance"] <= 0.2 else "different")
    status, body, _ = service.multipart("/v1/verify", fields + [("target_fmr", "0.0001")])
    assert status == 422 and body["error"]["code"] == "unsupported_target_fmr"
    assert "rule of three" in body["error"]["message"]


def test_batch_multipart_and_json(service, faces, calibration):
    a = [faces["id00"][0], faces["id00"][0], faces["id01"][2]]
    b = [faces["id00"][0], faces["id01"][1], faces["id01"][2]]
    status, body, _ = service.multipart("/v1/verify/batch", [("image_a", x) for x in a] + [("image_b", x) for x in b])
    assert status == 200, body
    assert body["count"] == 3 and len(body["results"]) == 3
    assert body["results"][0]["distance"] == pytest.approx(0.0, abs=1e-5)
    for result in body["results"]:
        assert result["decision"] == ("same" if result["distance"] <= calibration["threshold"] else "different")
    status, as_json, _ = service.json("/v1/verify/batch", {
        "image_a": [base64.b64encode(x).decode() for x in a],
        "image_b": [base64.b64encode(x).decode() for x in b], "threshold": 0.0})
    assert status == 200
    assert [r["distance"] for r in as_json["results"]] == pytest.approx([r["distance"] for r in body["results"]], abs=1e-6)
    assert as_json["results"][1]["decision"] == "different"
    assert all(r["threshold"] == 0.0 and r["policy"] == "request:threshold=0" for r in as_json["results"])


def test_health_ready_and_openapi(service, calibration):
    assert service.request("GET", "/healthz")[:2] == (200, {"status": "ok"})
    status, ready, _ = service.request("GET", "/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["calibrated"] is True
    assert ready["model"] == calibration["bundle_id"] and ready["fast_path_max_abs_diff"] <= 1e-4
    status, spec, _ = service.request("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.") and "/v1/verify" in spec["paths"]


def _metric(text, name, **labels):
    pattern = name + r"\{" + ",".join(f'{k}="{re.escape(str(v))}"' for k, v in sorted(labels.items())) + r"\} (\S+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_latency_and_decisions_across_workers(service, faces):
    _, before, content_type = service.request("GET", "/metrics")
    assert content_type.startswith("text/plain")
    fields = [("image_a", faces["id00"][0]), ("image_b", faces["id00"][0])]
    for _ in range(6):
        assert service.multipart("/v1/verify", fields)[0] == 200
    expected = _metric(before, "verifier_requests_total", route="/v1/verify", method="POST", status=200) + 6
    _, text, _ = service.request("GET", "/metrics")  # whichever worker answers sums both workers' files
    assert _metric(text, "verifier_requests_total", route="/v1/verify", method="POST", status=200) == expected
    assert _metric(text, "verifier_decisions_total", route="/v1/verify", decision="same") >= 6
    assert _metric(text, "verifier_request_duration_seconds_bucket", route="/v1/verify", le="+Inf") >= expected
    assert "# TYPE verifier_request_duration_seconds histogram" in text
    assert re.search(r'verifier_model_info\{[^}]*model="[^"]+"[^}]*\} 1\.0', text)


# -- bad requests: each its own clear 4xx JSON error ----------------------------------------------

def png_bomb(width=20_000, height=20_000):
    """A real PNG whose header claims width x height over a tiny zlib stream (cheap to build)."""
    data = bytearray(png_bytes(np.zeros((8, 8), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC over type + fields
    return bytes(data)


def test_png_bomb_header_is_well_formed():
    bomb = png_bomb()
    assert struct.unpack(">II", bomb[16:24]) == (20_000, 20_000)
    assert struct.unpack(">I", bomb[29:33])[0] == zlib.crc32(bomb[12:29])


def _bad_cases(good):
    one_pixel = png_bytes(np.full((1, 1), 128, np.uint8))
    truncated = good[: len(good) // 2]
    return {
        "not an image": (lambda s: s.multipart("/v1/verify", [("image_a", b"hello, not an image" * 10), ("image_b", good)]),
                         415, "unsupported_image"),
        "truncated png": (lambda s: s.multipart("/v1/verify", [("image_a", good), ("image_b", truncated)]),
                          422, "corrupt_image"),
        "zero-byte field": (lambda s: s.multipart("/v1/verify", [("image_a", b""), ("image_b", good)]),
                            400, "empty_image"),
        "missing field": (lambda s: s.multipart("/v1/verify", [("image_a", good)]), 400, "missing_field"),
        "one pixel": (lambda s: s.multipart("/v1/verify", [("image_a", one_pixel), ("image_b", good)]),
                      422, "image_too_small"),
        "png bomb": (lambda s: s.multipart("/v1/verify", [("image_a", png_bomb()), ("image_b", good)]),
                     413, "image_too_large"),
        "bad base64": (lambda s: s.json("/v1/verify", {"image_a": "***not base64***", "image_b": "AAAA"}),
                       400, "bad_base64"),
        "bad json": (lambda s: s.request("POST", "/v1/verify", b"{nope", {"Content-Type": "application/json"}),
                     400, "bad_json"),
        "wrong content type": (lambda s: s.request("POST", "/v1/verify", good, {"Content-Type": "image/png"}),
                               415, "unsupported_media_type"),
        "oversized request": (lambda s: s.multipart("/v1/verify", [("image_a", os.urandom(MAX_CONTENT_LENGTH + 1000)),
                                                                   ("image_b", good)]),
                              413, "request_too_large"),
        "oversized chunked json": (lambda s: s.chunked("/v1/verify", [b"A" * 350_000] * 3,
                                                       "application/json"), 413, "request_too_large"),
        "unknown route": (lambda s: s.request("GET", "/v1/nothing-here"), 404, "not_found"),
        "wrong method": (lambda s: s.request("GET", "/v1/verify"), 405, "method_not_allowed"),
        "bad threshold": (lambda s: s.multipart("/v1/verify", [("image_a", good), ("image_b", good), ("threshold", "abc")]),
                          400, "invalid_option"),
        "unpaired batch": (lambda s: s.multipart("/v1/verify/batch", [("image_a", good), ("image_a", good), ("image_b", good)]),
                           422, "unpaired_images"),
    }


@pytest.mark.parametrize("case", list(_bad_cases(b"").keys()))
def test_bad_request_gets_its_own_json_error_and_the_server_keeps_answering(service, faces, case):
    good = faces["id00"][0]
    send, status, code = _bad_cases(good)[case]
    got_status, body, content_type = send(service)
    assert content_type.startswith("application/json"), body
    assert got_status == status, body
    assert body["error"]["code"] == code
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    assert service.multipart("/v1/verify", [("image_a", good), ("image_b", good)])[0] == 200


def test_no_traceback_in_the_server_log(service):
    assert "Traceback" not in service.log_path.read_text()


def test_cli_verify_prints_the_same_answer_as_the_api(service, faces, calibrated_bundle, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(faces["id00"][1])
    b.write_bytes(faces["id01"][2])
    _, api, _ = service.multipart("/v1/verify", [("image_a", a.read_bytes()), ("image_b", b.read_bytes())])
    done = subprocess.run([sys.executable, "-m", "verifier", "verify", str(a), str(b), "--bundle",
                           str(calibrated_bundle), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    assert cli["distance"] == pytest.approx(api["distance"], abs=1e-6)
    for key in ("decision", "threshold", "policy", "model", "calibration_id", "profile", "metric", "backend"):
        assert cli[key] == api[key], key
    assert cli["confidence"] == pytest.approx(api["confidence"], abs=1e-6)


@pytest.mark.parametrize("raw, status, code", [
    (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
])
def test_malformed_http_is_answered_in_json_too(service, faces, raw, status, code):
    """gunicorn's own errors, raised before the app sees a request, use the same JSON shape."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == code
    good = faces["id00"][0]
    assert service.multipart("/v1/verify", [("image_a", good), ("image_b", good)])[0] == 200
