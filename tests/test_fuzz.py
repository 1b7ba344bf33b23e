"""Fuzzing (small, derandomized budget): mutated headers of real small images never crash the decoder,
and mutated JSON and multipart bodies never make the app answer 500."""

import io
import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.synthetic import png_bytes
from tests.test_decode_budget import png_16bit_rgba, pnm_bad_size, tiff_deflate
from verifier.core.errors import VerifierError
from verifier.core.images import decode_image
from verifier.web.app import create_app
from verifier.web.extensions import enrollment, scorer_holder

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _seeds():
    """Small real files of every accepted format, plus the hostile ones."""
    image = (np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)
    grey = image[:, :, 0]
    out = [cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm")]
    out += [cv2.imencode(".pgm", grey)[1].tobytes(), png_bytes(grey), png_16bit_rgba(20, 16),
            tiff_deflate(40_000, 40_000), pnm_bad_size()]
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw):
    """A seed file with a few bytes of its first 64 (the header) overwritten, inserted or cut."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, min(63, len(data) - 1)))
        action = draw(st.sampled_from(["set", "insert", "cut"]))
        if action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    if draw(st.booleans()):
        data = data[:draw(st.integers(1, len(data)))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_decoder_only_raises_verifier_errors(data):
    try:
        image = decode_image(data)
    except VerifierError as exc:
        assert 400 <= exc.status < 500
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3)


@pytest.fixture(scope="module")
def client(fusion_bundle, scorer, tmp_path_factory):
    """The app on the fusion-calibrated tiny bundle, with subject s1 created so its routes reach decoding."""
    database = tmp_path_factory.mktemp("fuzz") / "store.db"
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "DATABASE_URL": f"sqlite:///{database}",
                      "TESTING": True})
    scorer_holder(app).scorer = scorer.warm_up() if not scorer.warm else scorer
    client = app.test_client()
    assert client.post("/v1/subjects", json={"id": "s1"}).status_code == 201
    yield client
    enrollment(app).close()


ROUTES = ["/v1/verify", "/v1/verify/batch", "/v1/identify", "/v1/subjects", "/v1/subjects/s1/templates",
          "/v1/subjects/s1/verify"]
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)


def _assert_json_error_or_ok(response):
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code >= 400:
        assert set(response.get_json()["error"]) == {"code", "message"}


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.one_of(
    st.dictionaries(st.sampled_from(["image_a", "image_b", "image", "threshold", "target_fmr", "top_k", "id",
                                     "metadata"]), JSON_VALUES, max_size=5),
    JSON_VALUES,
).map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=64) | st.sampled_from([b"[" * 50_000, b'{"a":' * 50_000, b'{"threshold": 1' + b"0" * 5000 + b"}"]))
def test_json_bodies_never_answer_500(client, route, body):
    _assert_json_error_or_ok(client.post(route, data=body, content_type="application/json"))


@FUZZ
@given(route=st.sampled_from(ROUTES), fields=st.lists(st.tuples(
    st.sampled_from(["image_a", "image_b", "image", "threshold", "top_k"]),
    st.booleans(), mutated() | st.binary(max_size=32)), max_size=4))
def test_multipart_bodies_never_answer_500(client, route, fields):
    data = {}
    for name, as_file, value in fields:
        item = (io.BytesIO(value), f"{name}.bin") if as_file else value.decode("latin-1")
        data.setdefault(name, []).append(item)
    _assert_json_error_or_ok(client.post(route, data=data, content_type="multipart/form-data"))
