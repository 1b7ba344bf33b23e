"""Image similarity search: POST /v1/search, Gallery.nearest_templates and bench/search.py's metrics."""

import base64
import io

import numpy as np
import pytest

from bench.search import map_at_r, rankings, recall_at_k
from tests.synthetic import png_bytes
from verifier.core.distances import pair_distances
from verifier.enrollment.gallery import Gallery
from verifier.enrollment.keys import create_key
from verifier.enrollment.store import open_store


def png(image):
    return png_bytes(image[:, :, 0])


def upload(*images, **form):
    return {"data": {"image": [(io.BytesIO(png(i)), f"{n}.png") for n, i in enumerate(images)], **form},
            "content_type": "multipart/form-data"}


def b64(image):
    return base64.b64encode(png(image)).decode()


def error_code(response):
    return response.get_json()["error"]["code"]


@pytest.fixture
def catalogue(client, faces):
    """4 items x 3 images; {item: its template ids, in enrollment order}."""
    ids = {}
    for name, images in faces.items():
        assert client.post("/v1/subjects", json={"id": name}).status_code == 201
        ids[name] = client.post(f"/v1/subjects/{name}/templates", **upload(*images[:3])).get_json()["template_ids"]
    return ids


def test_search_ranks_the_stored_image_first(client, catalogue, faces, scorer):
    body = client.post("/v1/search", **upload(faces["id02"][1], k="5")).get_json()
    results = body["results"]
    assert len(results) == 5 and body["k"] == 5 and body["catalogue"] == {"items": 4, "images": 12}
    first = results[0]
    assert (first["rank"], first["subject_id"], first["template_id"]) == (1, "id02", catalogue["id02"][1])
    assert first["distance"] == pytest.approx(0, abs=1e-6) and first["decision"] == "same"
    distances = [r["distance"] for r in results]
    assert distances == sorted(distances) and len({r["template_id"] for r in results}) == 5
    assert {"model", "calibration_id", "profile", "metric", "modality", "threshold", "policy"} <= set(body)
    # each hit is scored as /v1/verify scores that pair: same distance, same calibrated confidence
    for hit in results[1:3]:
        subject, position = hit["subject_id"], catalogue[hit["subject_id"]].index(hit["template_id"])
        pair = client.post("/v1/verify", json={"image_a": b64(faces["id02"][1]),
                                               "image_b": b64(faces[subject][position])}).get_json()
        assert hit["distance"] == pytest.approx(pair["distance"], abs=1e-5)
        assert hit["confidence"] == pytest.approx(pair["confidence"], abs=1e-5)
        assert hit["decision"] == pair["decision"] and body["threshold"] == pair["threshold"]


def test_search_json_default_k_and_deletion(client, catalogue, faces):
    body = client.post("/v1/search", json={"image": b64(faces["id00"][0])}).get_json()
    assert len(body["results"]) == 10 and body["results"][0]["template_id"] == catalogue["id00"][0]
    client.delete("/v1/subjects/id00")
    after = client.post("/v1/search?k=20", json={"image": b64(faces["id00"][0])}).get_json()
    assert len(after["results"]) == 9 and "id00" not in {r["subject_id"] for r in after["results"]}


@pytest.mark.parametrize("options", [{"k": 0}, {"k": 101}, {"k": "many"}, {"k": 1.5}, {"k": True}])
def test_k_out_of_range_is_400(client, catalogue, faces, options):
    response = client.post("/v1/search", json={"image": b64(faces["id00"][0]), **options})
    assert response.status_code == 400 and error_code(response) == "invalid_option"
    assert "k must be an integer from 1 to 100" in response.get_json()["error"]["message"]


def test_k_in_the_query_string_is_checked_too(client, catalogue, faces):
    response = client.post("/v1/search?k=0", **upload(faces["id00"][0]))
    assert response.status_code == 400 and error_code(response) == "invalid_option"


def test_empty_catalogue_is_404(client, faces):
    response = client.post("/v1/search", json={"image": b64(faces["id00"][0])})
    assert response.status_code == 404 and error_code(response) == "empty_catalogue"
    client.post("/v1/subjects", json={"id": "nobody"})  # an item without images is still nothing to rank
    assert error_code(client.post("/v1/search", **upload(faces["id00"][0]))) == "empty_catalogue"


def test_other_bundles_templates_are_not_searched(client, app, faces):
    open_store(app.config["DATABASE_URL"]).add_templates("legacy", "0123456789abcdef", np.ones((2, 8)), create=True)
    response = client.post("/v1/search", json={"image": b64(faces["id00"][0])})
    assert response.status_code == 404 and error_code(response) == "empty_catalogue"


@pytest.mark.parametrize("kwargs, status, code", [
    ({"json": {"image": "", "modality": "iris"}}, 400, "unknown_modality"),
    ({"json": {}}, 400, "missing_field"),
    ({"json": {"image": ""}}, 400, "empty_image"),
    ({"json": {"image": "AAAA"}}, 415, "unsupported_image"),
    ({"data": "x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
])
def test_search_bad_input(client, catalogue, kwargs, status, code):
    response = client.post("/v1/search", **kwargs)
    assert response.status_code == status and error_code(response) == code


def test_search_needs_a_read_key_once_keys_exist(client, app, catalogue, faces):
    key, _ = create_key(open_store(app.config["DATABASE_URL"]), "reader", "read")
    assert client.post("/v1/search", json={"image": b64(faces["id00"][0])}).status_code == 401
    response = client.post("/v1/search", json={"image": b64(faces["id00"][0])}, headers={"X-API-Key": key})
    assert response.status_code == 200


def test_search_is_in_the_openapi_document(client):
    spec = client.get("/openapi.json").get_json()
    assert "/v1/search" in spec["paths"] and "SearchResult" in spec["components"]["schemas"]
    assert set(spec["paths"]["/v1/search"]["post"]["responses"]) >= {"200", "400", "401", "404", "415", "422"}


# -- the gallery -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["mean", "min", "centroid"])
def test_nearest_templates_exact_and_ids(store, rule):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 4)).astype(np.float32)
    first = store.add_templates("a", "B", vectors[:3], create=True)
    second = store.add_templates("b", "B", vectors[3:5], create=True)
    gallery = Gallery(store, "B", "euclidean", rule)
    gallery.snapshot()
    third = store.add_templates("a", "B", vectors[5:], create=True)  # appended after the first load
    ids = first + second + third
    owner = ["a"] * 3 + ["b"] * 2 + ["a"] * 2
    probe = vectors[4] + 0.01
    hits, snap = gallery.nearest_templates(probe, k=7)
    expected = pair_distances(np.repeat(probe[None], 7, 0), vectors, "euclidean")
    order = np.argsort(expected)
    assert [t for _, t, _ in hits] == [ids[i] for i in order]
    assert [s for s, _, _ in hits] == [owner[i] for i in order]
    assert np.allclose([d for _, _, d in hits], expected[order], atol=1e-12)
    assert len(gallery.nearest_templates(probe, k=2)[0]) == 2 and snap.version == store.version()
    store.delete_subject("b")
    assert {s for s, _, _ in gallery.nearest_templates(probe, k=7)[0]} == {"a"}


def test_nearest_templates_on_an_empty_gallery(store):
    hits, snap = Gallery(store, "B", "cosine", "mean").nearest_templates(np.ones(4), k=3)
    assert hits == [] and len(snap.templates) == 0


# -- bench/search.py's metrics -------------------------------------------------------------------

def test_recall_at_k_and_map_at_r_on_a_hand_made_ranking():
    relevant = np.array([[1, 0, 1, 0],   # R=2: AP@R = (1/1 + 0) / 2 = 0.5
                         [0, 1, 1, 0],   # R=2: AP@R = (0 + 1/2) / 2 = 0.25
                         [0, 0, 0, 1],   # R=1: AP@R = 0
                         [1, 1, 0, 0]], bool)  # R=2: 1.0
    r = np.array([2, 2, 1, 2])
    assert recall_at_k(relevant, 1) == 0.5 and recall_at_k(relevant, 2) == 0.75 and recall_at_k(relevant, 4) == 1
    assert map_at_r(relevant, r) == pytest.approx((0.5 + 0.25 + 0 + 1) / 4)
    assert map_at_r(relevant[:1], [0]) != map_at_r(relevant[:1], [0])  # no relevant item: nan, left out


def test_rankings_leave_the_query_out():
    embeddings = np.array([[0, 0], [0, 1], [5, 5], [5, 6]], float)
    relevant, r = rankings(embeddings, np.array([0, 0, 1, 1]), "euclidean")
    assert relevant.shape == (4, 3) and r.tolist() == [1, 1, 1, 1]
    assert relevant[:, 0].all() and recall_at_k(relevant, 1) == 1 and map_at_r(relevant, r) == 1
