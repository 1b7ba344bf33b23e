"""The Flask app in-process: lazy loading, 503 for an uncalibrated or missing bundle, JSON errors, OpenAPI."""

import io
import re

import numpy as np
import pytest

from tests.synthetic import png_bytes
from verifier.settings import load as load_config
from verifier.web.app import create_app
from verifier.web.extensions import enrollment, get_store, scorer_holder
from verifier.web.openapi import build_spec


@pytest.fixture
def image():
    return png_bytes((np.random.default_rng(0).random((56, 46)) * 255).astype(np.uint8))


def _pair(image):
    return {"image_a": (io.BytesIO(image), "a.png"), "image_b": (io.BytesIO(image), "b.png")}


def test_create_app_loads_nothing(tmp_path):
    app = create_app({"VERIFIER_BUNDLE": str(tmp_path / "absent")})
    assert scorer_holder(app).scorer is None
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "not_ready"


def test_missing_bundle_is_503_and_readyz_says_why(tmp_path, image):
    client = create_app({"VERIFIER_BUNDLE": str(tmp_path / "absent")}).test_client()
    response = client.post("/v1/verify", data=_pair(image), content_type="multipart/form-data")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "bundle_error"
    assert "bundle directory not found" in client.get("/readyz").get_json()["error"]["message"]


def test_uncalibrated_bundle_answers_503_not_a_made_up_threshold(tiny_bundle, image):
    app = create_app({"VERIFIER_BUNDLE": str(tiny_bundle)})
    client = app.test_client()
    for path in ("/v1/verify", "/v1/verify/batch"):
        response = client.post(path, data=_pair(image), content_type="multipart/form-data")
        assert response.status_code == 503
        error = response.get_json()["error"]
        assert error["code"] == "not_calibrated" and "calibration" in error["message"]
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["calibrated"] is False and ready["calibration_id"] is None


def test_unexpected_error_is_json_500_without_traceback(calibrated_bundle, monkeypatch, image):
    app = create_app({"VERIFIER_BUNDLE": str(calibrated_bundle)})
    scorer = scorer_holder(app).get()
    monkeypatch.setattr(scorer, "embed_inputs", lambda *a: 1 / 0)
    response = app.test_client().post("/v1/verify", data=_pair(image), content_type="multipart/form-data")
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal_error",
                                             "message": "internal server error; the server log has the details"}}


def test_batch_pair_limit(calibrated_bundle, image):
    app = create_app({"VERIFIER_BUNDLE": str(calibrated_bundle), "MAX_BATCH_PAIRS": 2})
    data = {"image_a": [(io.BytesIO(image), f"a{i}.png") for i in range(3)],
            "image_b": [(io.BytesIO(image), f"b{i}.png") for i in range(3)]}
    response = app.test_client().post("/v1/verify/batch", data=data, content_type="multipart/form-data")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_many_pairs"


def test_text_field_instead_of_upload_is_a_clear_400(calibrated_bundle, image):
    client = create_app({"VERIFIER_BUNDLE": str(calibrated_bundle)}).test_client()
    response = client.post("/v1/verify", data={"image_a": "hello", "image_b": (io.BytesIO(image), "b.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "must be a file upload" in response.get_json()["error"]["message"]


def test_config_precedence(monkeypatch):
    monkeypatch.setenv("VERIFIER_MAX_PIXELS", "1234")
    monkeypatch.setenv("VERIFIER_BUNDLE", "/env/bundle")
    config = load_config({"VERIFIER_BUNDLE": "/given/bundle"})
    assert config["MAX_PIXELS"] == 1234 and config["VERIFIER_BUNDLE"] == "/given/bundle"
    monkeypatch.setenv("VERIFIER_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="VERIFIER_MAX_PIXELS"):
        load_config()


def test_keep_images_setting_reaches_the_store(monkeypatch, tmp_path):
    monkeypatch.setenv("VERIFIER_KEEP_IMAGES", "yes")
    app = create_app({"VERIFIER_BUNDLE": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"})
    with app.app_context():
        assert get_store().keep_images is True
    enrollment(app).close()
    assert enrollment(app).store is None


def test_openapi_document_is_valid(tmp_path):
    spec = build_spec(create_app({"VERIFIER_BUNDLE": str(tmp_path)}))
    openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
    openapi_spec_validator.validate(spec)


def test_openapi_document_covers_every_route(tmp_path):
    """Structural checks that hold without the validator: every app route is described."""
    app = create_app({"VERIFIER_BUNDLE": str(tmp_path)})
    spec = build_spec(app)
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][path][method.lower()]
            assert operation["responses"] and operation["operationId"]
