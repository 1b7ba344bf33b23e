"""The enrollment routes through the Flask test client, on both stores: every route, good and bad input."""

import base64
import io

import cv2
import numpy as np
import pytest

from tests.synthetic import png_bytes
from verifier.enrollment.keys import create_key
from verifier.enrollment.store import open_store
from verifier.web.app import create_app
from verifier.web.extensions import enrollment, scorer_holder

BLANK = np.full((56, 46), 200, np.uint8)


def png(image):
    return png_bytes(image[:, :, 0] if image.ndim == 3 else image)


def upload(*images, field="image", **form):
    data = {field: [(io.BytesIO(png(i)), f"{n}.png") for n, i in enumerate(images)], **form}
    return {"data": data, "content_type": "multipart/form-data"}


def b64(image):
    return base64.b64encode(png(image)).decode()


def error_code(response):
    return response.get_json()["error"]["code"]


def enroll(client, faces, names=None, per=3):
    for name in names or faces:
        assert client.post("/v1/subjects", json={"id": name}).status_code == 201
        assert client.post(f"/v1/subjects/{name}/templates", **upload(*faces[name][:per])).status_code == 201


def test_subject_crud(client):
    response = client.post("/v1/subjects", json={"id": "alice", "metadata": {"dept": "x"}})
    assert response.status_code == 201 and response.get_json()["metadata"] == {"dept": "x"}
    assert client.post("/v1/subjects", json={"id": "alice"}).status_code == 409
    got = client.get("/v1/subjects/alice").get_json()
    assert got["template_count"] == 0 and got["needs_reenrollment"] is False
    assert client.delete("/v1/subjects/alice").get_json() == {"id": "alice", "deleted": True}
    assert client.get("/v1/subjects/alice").status_code == 404
    assert client.delete("/v1/subjects/alice").status_code == 404


@pytest.mark.parametrize("kwargs, status, code", [
    ({"json": {"id": "a b"}}, 400, "invalid_subject_id"),
    ({"json": {"metadata": {}}}, 400, "missing_field"),
    ({"json": {"id": "a", "extra": 1}}, 400, "bad_json"),
    ({"json": {"id": "a", "metadata": [1]}}, 400, "invalid_metadata"),
    ({"json": ["a"]}, 400, "bad_json"),
    ({"data": "{not json", "content_type": "application/json"}, 400, "bad_json"),
    ({"data": "id=a", "content_type": "text/plain"}, 415, "unsupported_media_type"),
])
def test_create_subject_bad_input(client, kwargs, status, code):
    response = client.post("/v1/subjects", **kwargs)
    assert response.status_code == status and error_code(response) == code


def test_list_is_paged(client):
    for name in ("c", "a", "b"):
        client.post("/v1/subjects", json={"id": name})
    page = client.get("/v1/subjects?limit=2").get_json()
    assert [s["id"] for s in page["subjects"]] == ["a", "b"] and page["total"] == 3
    rest = client.get(f"/v1/subjects?limit=2&after={page['next_after']}").get_json()
    assert [s["id"] for s in rest["subjects"]] == ["c"] and rest["next_after"] is None
    for bad in ("0", "x", "1001", "1.5"):
        response = client.get(f"/v1/subjects?limit={bad}")
        assert response.status_code == 400 and error_code(response) == "invalid_option"


def test_enroll_multipart_and_json(client, faces, scorer):
    client.post("/v1/subjects", json={"id": "id00"})
    response = client.post("/v1/subjects/id00/templates", **upload(*faces["id00"][:2]))
    body = response.get_json()
    assert response.status_code == 201 and body["enrolled"] == 2 and body["model"] == scorer.bundle_id
    response = client.post("/v1/subjects/id00/templates", json={"image": [b64(faces["id00"][2])]})
    assert response.status_code == 201 and response.get_json()["enrolled"] == 1
    response = client.post("/v1/subjects/id00/templates", json={"image": b64(faces["id00"][3])})
    assert response.status_code == 201
    subject = client.get("/v1/subjects/id00").get_json()
    assert subject["template_count"] == 4 and subject["current_templates"] == 4


def test_enroll_quality_failures(client, faces):
    client.post("/v1/subjects", json={"id": "id00"})
    body = client.post("/v1/subjects/id00/templates", **upload(faces["id00"][0], BLANK)).get_json()
    assert body["enrolled"] == 1 and body["failure_to_enrol"] == 1 and "blank" in body["failures"][0]["reason"]
    response = client.post("/v1/subjects/id00/templates", **upload(BLANK))
    assert response.status_code == 422 and error_code(response) == "failure_to_enrol"
    assert client.get("/v1/subjects/id00").get_json()["template_count"] == 1
    counted = client.get("/metrics").get_data(as_text=True)
    assert 'decision="failure_to_enrol",route="/v1/subjects/<subject_id>/templates"}' in counted


@pytest.mark.parametrize("path, kwargs, status, code", [
    ("/v1/subjects/ghost/templates", "face", 404, "subject_not_found"),
    ("/v1/subjects/bad%20id/templates", "face", 400, "invalid_subject_id"),
    ("/v1/subjects/id00/templates", {"data": {}, "content_type": "multipart/form-data"}, 400, "missing_field"),
    ("/v1/subjects/id00/templates", {"json": {}}, 400, "missing_field"),
    ("/v1/subjects/id00/templates", {"json": {"image": "!!!"}}, 400, "bad_base64"),
    ("/v1/subjects/id00/templates", {"json": {"image": base64.b64encode(b"text").decode()}}, 415,
     "unsupported_image"),
    ("/v1/subjects/id00/templates", "empty", 400, "empty_image"),
    ("/v1/subjects/id00/templates", {"data": b"x", "content_type": "image/png"}, 415, "unsupported_media_type"),
])
def test_enroll_bad_input(client, faces, path, kwargs, status, code):
    client.post("/v1/subjects", json={"id": "id00"})
    if kwargs == "face":
        kwargs = upload(faces["id00"][0])
    elif kwargs == "empty":
        kwargs = {"data": {"image": (io.BytesIO(b""), "e.png")}, "content_type": "multipart/form-data"}
    response = client.post(path, **kwargs)
    assert response.status_code == status and error_code(response) == code
    assert client.get("/v1/subjects/id00").get_json()["template_count"] == 0


def test_enroll_too_many_images(client, faces):
    client.post("/v1/subjects", json={"id": "id00"})
    response = client.post("/v1/subjects/id00/templates", json={"image": [b64(faces["id00"][0])] * 33})
    assert response.status_code == 413 and error_code(response) == "too_many_images"


def test_verify_subject(client, faces, scorer):
    enroll(client, faces, ["id00"])
    response = client.post("/v1/subjects/id00/verify", **upload(faces["id00"][4]))
    body = response.get_json()
    assert response.status_code == 200
    assert set(body) >= {"distance", "decision", "confidence", "threshold", "policy", "model", "calibration_id"}
    assert body["fusion"] == {"rule": "mean", "templates": 3} and body["model"] == scorer.bundle_id
    assert body["policy"] == "eer" and body["threshold"] == 0.4
    json_body = client.post("/v1/subjects/id00/verify", json={"image": b64(faces["id00"][4])}).get_json()
    assert json_body["distance"] == pytest.approx(body["distance"])
    tight = client.post("/v1/subjects/id00/verify", **upload(faces["id00"][4], threshold="0.0001")).get_json()
    assert tight["decision"] == "different" and tight["policy"] == "request:threshold=0.0001"
    at_fmr = client.post("/v1/subjects/id00/verify?target_fmr=0.1", **upload(faces["id00"][4])).get_json()
    assert at_fmr["policy"] == "request:target_fmr=0.1"


@pytest.mark.parametrize("path, kwargs, status, code", [
    ("/v1/subjects/ghost/verify", "face", 404, "subject_not_found"),
    ("/v1/subjects/empty/verify", "face", 409, "no_templates"),
    ("/v1/subjects/id00/verify", {"data": {}, "content_type": "multipart/form-data"}, 400, "missing_field"),
    ("/v1/subjects/id00/verify", "two", 400, "too_many_images"),
    ("/v1/subjects/id00/verify", {"json": {"image": "", "threshold": "x"}}, 400, "invalid_option"),
    ("/v1/subjects/id00/verify", {"json": {"image": "", "threshold": 1, "target_fmr": 0.1}}, 422,
     "conflicting_options"),
    ("/v1/subjects/id00/verify", {"json": {"image": "AAAA"}}, 415, "unsupported_image"),
])
def test_verify_subject_bad_input(client, faces, path, kwargs, status, code):
    enroll(client, faces, ["id00"])
    client.post("/v1/subjects", json={"id": "empty"})
    if kwargs == "face":
        kwargs = upload(faces["id00"][0])
    elif kwargs == "two":
        kwargs = upload(faces["id00"][0], faces["id00"][1])
    response = client.post(path, **kwargs)
    assert response.status_code == status and error_code(response) == code


def test_bundle_mismatch_is_409(client, app, faces):
    store = open_store(app.config["DATABASE_URL"])
    store.add_templates("legacy", "0123456789abcdef", np.ones((2, 8)), create=True)
    response = client.post("/v1/subjects/legacy/verify", **upload(faces["id00"][0]))
    body = response.get_json()["error"]
    assert response.status_code == 409 and body["code"] == "bundle_mismatch"
    assert "0123456789abcdef" in body["message"] and "reembed" in body["message"]
    assert client.get("/v1/subjects/legacy").get_json()["needs_reenrollment"] is True


def test_thumbnail_is_a_small_jpeg_of_a_kept_image(database_url, fusion_bundle, scorer, faces):
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "DATABASE_URL": database_url, "TESTING": True,
                      "KEEP_IMAGES": True})
    scorer_holder(app).scorer = scorer
    client = app.test_client()
    client.post("/v1/subjects", json={"id": "alice"})
    response = client.get("/v1/subjects/alice/thumbnail")
    assert response.status_code == 404 and error_code(response) == "no_image"
    large = np.kron(faces["id00"][0], np.ones((4, 4, 1), np.uint8))  # 224x184
    assert client.post("/v1/subjects/alice/templates", **upload(large)).status_code == 201
    response = client.get("/v1/subjects/alice/thumbnail")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["Cache-Control"].startswith("private, max-age=")
    thumbnail = cv2.imdecode(np.frombuffer(response.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert thumbnail.shape[:2] == (128, 105)  # longest side 128, aspect kept
    enrollment(app).close()


def test_thumbnail_without_kept_images_says_how_to_keep_them(client, faces):
    enroll(client, faces, ["id00"], per=1)
    body = client.get("/v1/subjects/id00/thumbnail").get_json()["error"]
    assert body["code"] == "no_image" and "VERIFIER_KEEP_IMAGES=1" in body["message"]
    assert error_code(client.get("/v1/subjects/ghost/thumbnail")) == "subject_not_found"


def test_identify(client, faces):
    enroll(client, faces)
    body = client.post("/v1/identify", **upload(faces["id01"][0], top_k="2")).get_json()
    assert body["match"] == "id01" and body["decision"] == "match" and len(body["candidates"]) == 2
    assert body["gallery"] == {"subjects": 4, "templates": 12} and body["fusion"] == {"rule": "mean"}
    assert {"model", "calibration_id", "threshold", "policy"} <= set(body)
    none = client.post("/v1/identify", json={"image": b64(faces["id01"][4]), "threshold": 0.00001}).get_json()
    assert none["match"] is None and none["decision"] == "no_match"
    client.delete("/v1/subjects/id01")
    after = client.post("/v1/identify", **upload(faces["id01"][0])).get_json()
    assert "id01" not in [c["subject_id"] for c in after["candidates"]]


@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": {}, "content_type": "multipart/form-data"}, 400, "missing_field"),
    ({"json": {"image": "", "top_k": 0}}, 400, "invalid_option"),
    ({"json": {"image": "", "top_k": "many"}}, 400, "invalid_option"),
    ({"json": {"image": "", "top_k": 101}}, 400, "invalid_option"),
    ({"json": {"image": ""}}, 400, "empty_image"),
    ({"data": "x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
])
def test_identify_bad_input(client, kwargs, status, code):
    response = client.post("/v1/identify", **kwargs)
    assert response.status_code == status and error_code(response) == code


def test_api_keys_lock_the_enrollment_routes(client, app, faces):
    store = open_store(app.config["DATABASE_URL"])
    assert client.get("/v1/subjects").status_code == 200  # no keys yet: open
    key, record = create_key(store, "ops")
    for headers in ({}, {"X-API-Key": "vk_wrong"}):
        for method, path in (("get", "/v1/subjects"), ("post", "/v1/subjects"), ("get", "/v1/subjects/x"),
                             ("get", "/v1/subjects/x/thumbnail"), ("delete", "/v1/subjects/x"),
                             ("post", "/v1/subjects/x/templates"), ("post", "/v1/subjects/x/verify"),
                             ("post", "/v1/identify")):
            response = getattr(client, method)(path, headers=headers, json={"id": "x"})
            assert response.status_code == 401 and error_code(response) == "unauthorized", (method, path)
    assert client.post("/v1/subjects", json={"id": "x"}, headers={"X-API-Key": key}).status_code == 201
    assert client.get("/healthz").status_code == 200  # service routes stay open
    store.revoke_key(record["id"])
    closed = client.get("/v1/subjects")  # revoking the last key does not reopen the routes
    assert closed.status_code == 401 and "no active API key" in closed.get_json()["error"]["message"]


def test_unreachable_store_is_503(fusion_bundle, scorer, tmp_path):
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "TESTING": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})
    scorer_holder(app).scorer = scorer
    response = app.test_client().get("/v1/subjects")
    assert response.status_code == 503 and "does not exist" in response.get_json()["error"]["message"]


def test_openapi_lists_the_enrollment_routes(client):
    spec = client.get("/openapi.json").get_json()
    for path in ("/v1/subjects", "/v1/subjects/{subject_id}", "/v1/subjects/{subject_id}/thumbnail",
                 "/v1/subjects/{subject_id}/templates", "/v1/subjects/{subject_id}/verify", "/v1/identify"):
        assert path in spec["paths"]
    assert "IdentifyResult" in spec["components"]["schemas"]
