"""Enrollment over real HTTP: gunicorn with 2 workers sharing one SQLite store.

Concurrent enrollments through both workers must all land, and a change made through one
worker (a deletion, a new API key) must be seen by the other at once.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.live_service import running_service
from tests.synthetic import identity_images, png_bytes
from verifier.enrollment.keys import create_key
from verifier.enrollment.store import open_store


@pytest.fixture(scope="module")
def served(fusion_bundle, tmp_path_factory):
    """(client, database URL) of `python -m verifier serve` on a fresh SQLite store; killed at the end."""
    work = tmp_path_factory.mktemp("subjects-service")
    url = f"sqlite:///{work / 'store.db'}"
    with running_service(fusion_bundle, work / "gunicorn.log", env={"DATABASE_URL": url}) as client:
        yield client, url


def test_concurrent_enrollment_identify_delete_and_keys(served):
    client, url = served
    faces = {name: [png_bytes(image) for image in images]
             for name, images in identity_images(n_identities=4, per_identity=5, seed=3).items()}
    for name in faces:
        assert client.json("/v1/subjects", {"id": name})[0] == 201

    def enroll(job):
        name, i = job
        return client.multipart(f"/v1/subjects/{name}/templates",
                                [("image", faces[name][i % 3]), ("image", faces[name][(i + 1) % 3])])[0]

    jobs = [(name, i) for name in faces for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(enroll, jobs)) == {201}
    for name in faces:
        status, body, _ = client.request("GET", f"/v1/subjects/{name}")
        assert status == 200 and body["template_count"] == 12
    assert open_store(url).count_templates() == 4 * 6 * 2

    for _ in range(4):  # several requests, so both workers answer
        status, body, _ = client.multipart("/v1/identify", [("image", faces["id02"][0])])
        assert status == 200 and body["match"] == "id02" and body["gallery"]["templates"] == 48
    status, body, _ = client.multipart("/v1/subjects/id02/verify", [("image", faces["id02"][4])])
    assert status == 200 and body["fusion"] == {"rule": "mean", "templates": 12}

    assert client.request("DELETE", "/v1/subjects/id02")[0] == 200
    for _ in range(4):
        status, body, _ = client.multipart("/v1/identify", [("image", faces["id02"][0])])
        assert status == 200 and "id02" not in [c["subject_id"] for c in body["candidates"]]
        assert client.multipart("/v1/subjects/id02/verify", [("image", faces["id02"][0])])[0] == 404

    key, _ = create_key(open_store(url), "test")
    for _ in range(4):
        status, body, _ = client.request("GET", "/v1/subjects")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert client.request("GET", "/v1/subjects", headers={"X-API-Key": key})[0] == 200
