"""Real answers of the Flask app, checked against its own /openapi.json with openapi-core.

Every documented operation is called, with good input and with each kind of error it
documents (400, 401, 404, 409, 413, 415, 422, 503); each response must match the
document's schema for its status, and each good request must match its request schema.
The last test checks that every operation in the document was exercised here.
"""

import base64
import io

import numpy as np
import pytest

from tests.synthetic import png_bytes
from verifier.enrollment.keys import create_key
from verifier.web.app import create_app
from verifier.web.extensions import enrollment, get_store, scorer_holder

openapi_core = pytest.importorskip("openapi_core")
from flask.testing import EnvironBuilder  # noqa: E402
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse  # noqa: E402
from werkzeug.wrappers import Request  # noqa: E402

BLANK = np.full((56, 46), 200, np.uint8)
CHECKED = set()  # operationIds whose responses were validated


@pytest.fixture(scope="module")
def app(tmp_path_factory, fusion_bundle, scorer):
    database = tmp_path_factory.mktemp("contract") / "store.db"
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "DATABASE_URL": f"sqlite:///{database}",
                      "TESTING": True, "MAX_BATCH_PAIRS": 4, "MAX_CONTENT_LENGTH": 2_000_000, "KEEP_IMAGES": True})
    scorer_holder(app).scorer = scorer.warm_up() if not scorer.warm else scorer
    yield app
    enrollment(app).close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def spec(client):
    return openapi_core.OpenAPI.from_dict(client.get("/openapi.json").get_json())


@pytest.fixture(scope="module")
def faces():
    from tests.synthetic import identity_images

    return {name: [png_bytes(image) for image in images]
            for name, images in identity_images(n_identities=3, per_identity=4, seed=5).items()}


class Api:
    """Sends requests to the app and checks each answer (and each good request) against the document."""

    def __init__(self, app, spec):
        self.app, self.spec, self.client = app, spec, app.test_client()

    def call(self, method, path, status, *, text_options=False, **kwargs):
        """The answer's JSON, once its status is `status` and it matches the document.

        `text_options`: a multipart request with numeric form fields, which openapi-core 0.23 does
        not cast from text, so only the response is checked.
        """
        environ = EnvironBuilder(self.app, path, method=method.upper(), **kwargs).get_environ()
        body = environ["wsgi.input"].read()
        environ["wsgi.input"] = io.BytesIO(body)
        response = self.client.open(Request(environ))
        assert response.status_code == status, response.get_data(as_text=True)
        request = WerkzeugOpenAPIRequest(Request(dict(environ, **{"wsgi.input": io.BytesIO(body)})))
        if status < 400 and not text_options:
            self.spec.validate_request(request)
        self.spec.validate_response(request, WerkzeugOpenAPIResponse(response))
        CHECKED.add(self.operation_id(response.request))
        return response.get_json()

    def operation_id(self, request):
        endpoint, _ = self.app.url_map.bind("localhost").match(request.path, request.method)
        return self.app.view_functions[endpoint].openapi["operationId"]

    def get(self, path, status, **kwargs):
        return self.call("get", path, status, **kwargs)

    def post(self, path, status, **kwargs):
        return self.call("post", path, status, **kwargs)

    def delete(self, path, status, **kwargs):
        return self.call("delete", path, status, **kwargs)


@pytest.fixture(scope="module")
def api(app, spec):
    return Api(app, spec)


def files(field, *images):
    return {field: [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(images)]}


def b64(data):
    return base64.b64encode(data).decode()


def test_service_routes(api):
    assert api.get("/healthz", 200) == {"status": "ok"}
    assert api.get("/readyz", 200)["status"] == "ready"
    assert api.get("/openapi.json", 200)["openapi"].startswith("3.")


def test_page(api):
    assert api.get("/", 200) is None  # HTML, not JSON


def test_calibration(api):
    body = api.get("/v1/calibration", 200)
    assert body["policy"] == "eer" and body["target_fmrs"] == [0.1]


def test_metrics(api):
    assert api.get("/metrics", 200) is None  # Prometheus text, not JSON


def test_readyz_and_verify_without_a_bundle(tmp_path, spec):
    api = Api(create_app({"VERIFIER_BUNDLE": str(tmp_path / "absent"), "TESTING": True}), spec)
    assert api.get("/readyz", 503)["error"]["code"] == "not_ready"
    assert api.post("/v1/verify", 503, json={"image_a": "AAAA", "image_b": "AAAA"})["error"]["code"] == "bundle_error"
    assert api.get("/v1/calibration", 503)["error"]["code"] == "bundle_error"


def test_verify(api, faces):
    a, b = faces["id00"][0], faces["id01"][0]
    body = api.post("/v1/verify", 200, data=files("image_a", a) | files("image_b", b))
    assert body["policy"] == "eer"
    assert api.post("/v1/verify?threshold=0.3", 200, json={"image_a": b64(a), "image_b": b64(b)})["threshold"] == 0.3
    api.post("/v1/verify", 200, json={"image_a": b64(a), "image_b": b64(b), "target_fmr": 0.1})
    api.post("/v1/verify", 200, data={**files("image_a", a), **files("image_b", b), "threshold": "0.2"},
             text_options=True)


@pytest.mark.parametrize("kwargs, status, code", [
    ({"json": {"image_b": "AAAA"}}, 400, "missing_field"),
    ({"json": {"image_a": "!!", "image_b": "AAAA"}}, 400, "bad_base64"),
    ({"json": {"image_a": "AAAA", "image_b": "AAAA", "threshold": "x"}}, 400, "invalid_option"),
    ({"json": {"image_a": "AAAA", "image_b": "AAAA", "target_fmr": 0.0001}}, 422, "unsupported_target_fmr"),
    ({"json": {"image_a": "AAAA", "image_b": "AAAA", "threshold": 1, "target_fmr": 0.1}}, 422,
     "conflicting_options"),
    ({"json": {"image_a": "AAAA", "image_b": "AAAA"}}, 415, "unsupported_image"),
    ({"data": b"x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": b"x" * 2_000_001, "content_type": "application/json"}, 413, "request_too_large"),
])
def test_verify_errors(api, kwargs, status, code):
    assert api.post("/v1/verify", status, **kwargs)["error"]["code"] == code


def test_verify_corrupt_image_is_422(api, faces):
    cut = faces["id00"][0][:-40]
    body = api.post("/v1/verify", 422, json={"image_a": b64(cut), "image_b": b64(faces["id00"][1])})
    assert body["error"]["code"] == "corrupt_image"


def test_verify_batch(api, faces):
    a, b = faces["id00"][:2], faces["id01"][:2]
    assert api.post("/v1/verify/batch", 200, data=files("image_a", *a) | files("image_b", *b))["count"] == 2
    api.post("/v1/verify/batch", 200, json={"image_a": [b64(x) for x in a], "image_b": [b64(x) for x in b]})
    unpaired = api.post("/v1/verify/batch", 422, json={"image_a": [b64(a[0])], "image_b": [b64(x) for x in b]})
    assert unpaired["error"]["code"] == "unpaired_images"
    many = api.post("/v1/verify/batch", 413, json={"image_a": [b64(a[0])] * 5, "image_b": [b64(b[0])] * 5})
    assert many["error"]["code"] == "too_many_pairs"


def test_subjects(api):
    assert api.post("/v1/subjects", 201, json={"id": "alice", "metadata": {"team": "x"}})["id"] == "alice"
    assert api.post("/v1/subjects", 409, json={"id": "alice"})["error"]["code"] == "subject_exists"
    assert api.post("/v1/subjects", 400, json={"id": "a b"})["error"]["code"] == "invalid_subject_id"
    assert api.post("/v1/subjects", 415, data="id=a", content_type="text/plain")["error"]["code"] == \
        "unsupported_media_type"
    assert [s["id"] for s in api.get("/v1/subjects?limit=10", 200)["subjects"]] == ["alice"]
    assert api.get("/v1/subjects?limit=0", 400)["error"]["code"] == "invalid_option"
    assert api.get("/v1/subjects/alice", 200)["current_templates"] == 0
    assert api.get("/v1/subjects/nobody", 404)["error"]["code"] == "subject_not_found"
    assert api.get("/v1/subjects/alice/thumbnail", 404)["error"]["code"] == "no_image"  # no templates yet
    assert api.get("/v1/subjects/nobody/thumbnail", 404)["error"]["code"] == "subject_not_found"
    assert api.delete("/v1/subjects/alice", 200) == {"id": "alice", "deleted": True}
    assert api.delete("/v1/subjects/alice", 404)["error"]["code"] == "subject_not_found"


def test_enroll_verify_identify(api, faces):
    for name in faces:
        api.post("/v1/subjects", 201, json={"id": name})
        assert api.post(f"/v1/subjects/{name}/templates", 201, data=files("image", *faces[name][:2]))["enrolled"] == 2
    api.post("/v1/subjects/id00/templates", 201, json={"image": [b64(faces["id00"][2])]})
    api.post("/v1/subjects/id00/templates", 201, json={"image": b64(faces["id00"][2])})
    assert api.get("/v1/subjects/id00/thumbnail", 200) is None  # image/jpeg, as documented
    partial = api.post("/v1/subjects/id01/templates", 201, data=files("image", faces["id01"][2], png_bytes(BLANK)))
    assert partial["failure_to_enrol"] == 1
    body = api.post("/v1/subjects/id00/verify", 200, data=files("image", faces["id00"][3]))
    assert body["subject_id"] == "id00" and body["fusion"]["rule"] == "mean"
    api.post("/v1/subjects/id00/verify?threshold=0.001", 200, json={"image": b64(faces["id00"][3])})
    found = api.post("/v1/identify", 200, data={**files("image", faces["id02"][3]), "top_k": "2"},
                     text_options=True)
    assert len(found["candidates"]) == 2
    none = api.post("/v1/identify", 200, json={"image": b64(faces["id02"][3]), "threshold": 0.00001})
    assert none["match"] is None and none["decision"] == "no_match"


def test_search(api, faces, tmp_path, fusion_bundle, scorer, spec):
    """After test_enroll_verify_identify: the catalogue holds images; a fresh store's is empty (404)."""
    found = api.post("/v1/search?k=3", 200, json={"image": b64(faces["id02"][3])})
    assert len(found["results"]) == 3 and found["results"][0]["rank"] == 1
    api.post("/v1/search", 200, data={**files("image", faces["id02"][3]), "k": "2"}, text_options=True)
    assert api.post("/v1/search", 400, json={"image": "", "k": 101})["error"]["code"] == "invalid_option"
    assert api.post("/v1/search", 422, json={"image": b64(faces["id00"][0][:-40])})["error"]["code"] == \
        "corrupt_image"
    empty = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "TESTING": True,
                        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    scorer_holder(empty).scorer = scorer
    answer = Api(empty, spec).post("/v1/search", 404, json={"image": b64(faces["id00"][0])})
    assert answer["error"]["code"] == "empty_catalogue"
    enrollment(empty).close()


@pytest.fixture(scope="module")
def empty_subject(api):
    """A subject without templates."""
    api.post("/v1/subjects", 201, json={"id": "empty"})
    return "empty"


@pytest.mark.parametrize("path, status, code, body", [
    ("/v1/subjects/ghost/templates", 404, "subject_not_found", {"image": "FACE"}),
    ("/v1/subjects/empty/templates", 422, "failure_to_enrol", {"image": "BLANK"}),
    ("/v1/subjects/empty/templates", 413, "too_many_images", {"image": ["FACE"] * 33}),
    ("/v1/subjects/empty/templates", 400, "missing_field", {}),
    ("/v1/subjects/ghost/verify", 404, "subject_not_found", {"image": "FACE"}),
    ("/v1/subjects/empty/verify", 409, "no_templates", {"image": "FACE"}),
    ("/v1/subjects/empty/verify", 415, "unsupported_image", {"image": "AAAA"}),
    ("/v1/subjects/empty/verify", 422, "unsupported_target_fmr", {"image": "", "target_fmr": 0.0001}),
    ("/v1/identify", 400, "invalid_option", {"image": "", "top_k": 101}),
    ("/v1/identify", 422, "corrupt_image", {"image": "CUT"}),
])
def test_enrollment_errors(api, faces, empty_subject, path, status, code, body):
    images = {"FACE": b64(faces["id00"][0]), "BLANK": b64(png_bytes(BLANK)), "CUT": b64(faces["id00"][0][:-40])}
    body = {key: [images.get(v, v) for v in value] if isinstance(value, list) else images.get(value, value)
            for key, value in body.items()}
    assert api.post(path, status, json=body)["error"]["code"] == code


def test_wrong_content_type_on_enrollment_is_415(api):
    assert api.post("/v1/identify", 415, data=b"x", content_type="image/png")["error"]["code"] == \
        "unsupported_media_type"


def test_api_keys_make_every_enrollment_route_401(app, api):
    with app.app_context():
        key, record = create_key(get_store(), "contract")
    try:
        for method, path in (("get", "/v1/subjects"), ("post", "/v1/subjects"), ("get", "/v1/subjects/x"),
                             ("get", "/v1/subjects/x/thumbnail"), ("delete", "/v1/subjects/x"),
                             ("post", "/v1/subjects/x/templates"), ("post", "/v1/subjects/x/verify"),
                             ("post", "/v1/identify"), ("post", "/v1/search")):
            answer = api.call(method, path, 401, json={"id": "x"}, headers={"X-API-Key": "vk_wrong"})
            assert answer["error"]["code"] == "unauthorized"
        api.get("/v1/subjects", 200, headers={"X-API-Key": key})
    finally:
        with app.app_context():
            get_store().revoke_key(record["id"])


def test_keys_answer_401_on_verify_and_metrics_and_403_for_a_read_key(tmp_path, fusion_bundle, scorer, spec, faces):
    """VERIFIER_PROTECT=all (the default): verify and /metrics need a key too; a read key cannot write."""
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "TESTING": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"})
    scorer_holder(app).scorer = scorer
    api = Api(app, spec)
    with app.app_context():
        reader, record = create_key(get_store(), "reader", "read")
    pair = {"image_a": b64(faces["id00"][0]), "image_b": b64(faces["id01"][0])}
    assert api.post("/v1/verify", 401, json=pair)["error"]["code"] == "unauthorized"
    assert api.post("/v1/verify/batch", 401, json=pair, headers={"X-API-Key": "vk_wrong"})["error"]["code"] == \
        "unauthorized"
    assert api.get("/metrics", 401)["error"]["code"] == "unauthorized"
    api.post("/v1/verify", 200, json=pair, headers={"X-API-Key": reader})
    for method, path in (("post", "/v1/subjects"), ("delete", "/v1/subjects/x"), ("post", "/v1/subjects/x/templates")):
        answer = api.call(method, path, 403, json={"id": "x"}, headers={"X-API-Key": reader})
        assert answer["error"]["code"] == "forbidden"
    with app.app_context():
        get_store().revoke_key(record["id"])
    closed = api.post("/v1/verify", 401, json=pair, headers={"X-API-Key": reader})  # the last key: still closed
    assert closed["error"]["message"].startswith("no active API key")
    enrollment(app).close()


def test_unreachable_store_is_503(tmp_path, fusion_bundle, scorer, spec):
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "TESTING": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})
    scorer_holder(app).scorer = scorer
    assert "does not exist" in Api(app, spec).get("/v1/subjects", 503)["error"]["message"]


def test_two_modalities(tmp_path, fusion_bundle, signature_bundle, scorer, signature_scorer, spec, faces):
    """Two bundles served at once: the modality field, 400 unknown_modality and 409 modality_mismatch."""
    app = create_app({"VERIFIER_BUNDLE": f"face={fusion_bundle},signature={signature_bundle}", "TESTING": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'two.db'}"})
    scorer_holder(app).scorer = scorer.warm_up() if not scorer.warm else scorer
    scorer_holder(app, "signature").scorer = signature_scorer.warm_up() if not signature_scorer.warm \
        else signature_scorer
    api = Api(app, spec)
    listed = api.get("/v1/modalities", 200)
    assert [m["modality"] for m in listed["modalities"]] == ["face", "signature"] and listed["default"] == "face"
    assert api.get("/readyz", 200)["modalities"]["signature"]["model"] == signature_scorer.bundle_id
    assert api.get("/v1/calibration?modality=signature", 200)["modality"] == "signature"
    assert api.get("/v1/calibration?modality=iris", 400)["error"]["code"] == "unknown_modality"
    a, b = faces["id00"][:2]
    body = api.post("/v1/verify", 200, json={"image_a": b64(a), "image_b": b64(b), "modality": "signature"})
    assert body["model"] == signature_scorer.bundle_id
    assert api.post("/v1/verify", 400, json={"image_a": b64(a), "image_b": b64(b), "modality": "iris"})
    assert api.post("/v1/subjects", 201, json={"id": "w0", "modality": "signature"})["modality"] == "signature"
    assert api.post("/v1/subjects/w0/templates", 201,
                    data={**files("image", *faces["id01"][:2]), "modality": "signature"})["modality"] == "signature"
    assert api.get("/v1/subjects/w0", 200)["current_templates"] == 2
    assert api.get("/v1/subjects?modality=signature", 200)["total"] == 1
    assert api.post("/v1/subjects/w0/verify?modality=signature", 200,
                    data=files("image", faces["id01"][2]))["modality"] == "signature"
    assert api.post("/v1/identify", 200, json={"image": b64(faces["id01"][2]), "modality": "signature"})[
        "candidates"][0]["subject_id"] == "w0"
    for path in ("/v1/subjects/w0/templates", "/v1/subjects/w0/verify"):
        assert api.post(path, 409, data=files("image", faces["id01"][2]))["error"]["code"] == "modality_mismatch"
    enrollment(app).close()


def test_every_documented_operation_was_checked(api):
    """Runs last (file order): the calls above cover every operation of the document."""
    document = api.client.get("/openapi.json").get_json()
    documented = {operation["operationId"] for item in document["paths"].values() for operation in item.values()}
    assert documented <= CHECKED, sorted(documented - CHECKED)
