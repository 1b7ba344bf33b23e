"""Fixtures for the enrollment tests: a fresh store of each backend, fusion-calibrated scorers (face, signature).

PostgreSQL runs when TEST_DATABASE_URL names a server (e.g.
postgresql://postgres@127.0.0.1:5432/postgres); each test gets its own new schema in that
database, dropped afterwards. Without TEST_DATABASE_URL the PostgreSQL cases are skipped, saying so.
"""

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

BACKENDS = ("sqlite", "postgresql")


def _postgres_schema():
    """Create a fresh schema on TEST_DATABASE_URL's database; returns (a URL that uses it, a dropper).

    A schema per test (chosen through the connection's search_path) is much cheaper than a
    database per test and isolates just as well.
    """
    import psycopg

    admin_url = os.environ["TEST_DATABASE_URL"]
    name = f"verifier_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    parts = urlsplit(admin_url)
    query = "&".join(filter(None, [parts.query, f"options=-csearch_path%3D{name}"]))
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def drop():
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    return url, drop


def hand_written_calibration(*, pair, fusion, b, fusion_b):
    """A calibration.json with the given pair and fusion thresholds and logistic maps (fixture data, not a fit)."""
    import numpy as np

    distances = np.linspace(0.0, 2.0, 41)
    points = {"distance": distances.tolist(), "fmr": np.clip(distances / 2.0, 0, 1).tolist(),
              "fnmr": np.clip(1 - distances, 0, 1).tolist()}
    confidence = {"kind": "logistic", "a": -10.0, "b": b, "prior": 0.5, "train_prior": 0.5}
    return {"policy": "eer", "threshold": pair, "metric": "euclidean", "confidence": confidence,
            "operating_points": points,
            "fusion": {"rule": "mean", "templates_per_subject": 3, "policy": "eer", "threshold": fusion,
                       "confidence": dict(confidence, b=fusion_b), "operating_points": points}}


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """The URL of a fresh, empty database of each backend (not yet migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL store not tested: set TEST_DATABASE_URL=postgresql://USER@HOST:PORT/DB "
                    "(a database the tests may create and drop schemas in)")
    url, drop = _postgres_schema()
    yield url
    drop()


@pytest.fixture
def store(database_url):
    """A migrated store on a fresh database (images kept, so re-embedding can be tested)."""
    from verifier.enrollment.store import open_store

    store = open_store(database_url, keep_images=True)
    yield store
    store.close()


@pytest.fixture(scope="session")
def fusion_bundle(tmp_path_factory, tiny_bundle):
    """The tiny bundle with a hand-written calibration that has a "fusion" section (fixture data)."""
    import shutil


    from verifier.core.bundle import write_calibration

    path = tmp_path_factory.mktemp("bundle") / "fusion"
    shutil.copytree(tiny_bundle, path)
    write_calibration(path, hand_written_calibration(pair=0.5, fusion=0.4, b=5.0, fusion_b=4.0))
    return path


@pytest.fixture(scope="session")
def scorer(fusion_bundle):
    """A scorer on the fusion-calibrated tiny bundle (tf.function path: no export to build)."""
    from verifier.core.scorer import Scorer

    return Scorer.from_bundle(fusion_bundle, backend="tf.function")


@pytest.fixture(scope="session")
def faces():
    """{identity: [uint8 HxWx1 images]}: 4 synthetic identities x 5 images."""
    from tests.synthetic import identity_images

    return {name: [image[:, :, None] for image in images]
            for name, images in identity_images(n_identities=4, per_identity=5, seed=3).items()}


@pytest.fixture(scope="session")
def signature_bundle(tmp_path_factory):
    """A second tiny bundle, of the signature profile (another modality), with a fusion calibration.

    Built without training, like the face one; its tower has another seed, so another bundle id.
    """

    from tests.conftest import tiny_tower
    from verifier.core.bundle import save_bundle, write_calibration
    from verifier.core.profiles import get_profile

    path = tmp_path_factory.mktemp("bundle") / "signature"
    profile = get_profile("signature")
    save_bundle(path, tiny_tower(profile, seed=1), profile=profile, metric="euclidean",
                recipe={"loss": "none", "seed": 1, "dataset": {"name": "synthetic-signatures"},
                        "train_identities": [], "validation_identities": [], "holdout_identities": []})
    write_calibration(path, hand_written_calibration(pair=0.6, fusion=0.45, b=6.0, fusion_b=6.0))
    return path


@pytest.fixture(scope="session")
def signature_scorer(signature_bundle):
    """A scorer on the signature bundle (tf.function path)."""
    from verifier.core.scorer import Scorer

    return Scorer.from_bundle(signature_bundle, backend="tf.function")


@pytest.fixture
def app(database_url, fusion_bundle, scorer):
    """The service on a fresh store of each backend, sharing the session's loaded face scorer."""
    from verifier.web.app import create_app
    from verifier.web.extensions import enrollment, scorer_holder

    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "DATABASE_URL": database_url, "TESTING": True})
    scorer_holder(app).scorer = scorer
    yield app
    enrollment(app).close()


@pytest.fixture
def client(app):
    return app.test_client()
