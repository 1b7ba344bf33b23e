"""The web page without a browser: the HTML and its static files, and GET /v1/calibration's content."""

from html.parser import HTMLParser

import pytest

from verifier.core.bundle import read_calibration
from verifier.web.app import create_app
from verifier.web.calibration_view import MAX_POINTS, calibration_view
from verifier.web.extensions import enrollment, scorer_holder

VIEWS = ("view-verify", "view-subjects", "view-identify", "view-calibration")


class Elements(HTMLParser):
    """Every start tag's attributes, in document order."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def client(tmp_path_factory, fusion_bundle, scorer):
    app = create_app({"VERIFIER_BUNDLE": str(fusion_bundle), "TESTING": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('page') / 'store.db'}"})
    scorer_holder(app).scorer = scorer
    yield app.test_client()
    enrollment(app).close()


@pytest.fixture(scope="module")
def elements(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    parser = Elements()
    parser.feed(response.get_data(as_text=True))
    return parser.tags


def test_the_page_has_four_views_with_tabs(elements):
    panels = [attrs["id"] for tag, attrs in elements if attrs.get("role") == "tabpanel"]
    tabs = [attrs["aria-controls"] for tag, attrs in elements if attrs.get("role") == "tab"]
    assert panels == list(VIEWS) == tabs
    assert any(attrs.get("role") == "alert" for _, attrs in elements)


def test_every_control_has_a_label(elements):
    labelled = {attrs["for"] for tag, attrs in elements if tag == "label"}
    controls = [attrs["id"] for tag, attrs in elements if tag in ("input", "select")]
    assert controls and set(controls) <= labelled


def test_the_page_names_the_key_header(client):
    assert 'data-key-header="X-API-Key"' in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("name, mimetype", [("page.js", "text/javascript"), ("charts.js", "text/javascript"),
                                            ("page.css", "text/css")])
def test_static_files_are_served_with_their_types(client, elements, name, mimetype):
    linked = {attrs.get("src") or attrs.get("href") for tag, attrs in elements if tag in ("script", "link")}
    assert f"/static/{name}" in linked
    response = client.get(f"/static/{name}")
    assert response.status_code == 200 and response.mimetype == mimetype


def test_nothing_is_loaded_from_elsewhere(elements):
    sources = [attrs.get("src") or attrs.get("href") for tag, attrs in elements if tag in ("script", "link", "img")]
    assert all(source.startswith("/") for source in sources if source)


def test_calibration_endpoint_on_the_fixture_calibration(client, scorer):
    body = client.get("/v1/calibration").get_json()
    assert body["model"] == scorer.bundle_id and body["policy"] == "eer" and body["threshold"] == 0.5
    assert body["prior"] == 0.5
    assert body["operating_point"] == {"threshold": 0.5, "fmr": pytest.approx(0.25), "fnmr": pytest.approx(0.5)}
    assert len(body["curve"]["distance"]) == 41
    histogram = body["histogram"]
    assert histogram["unit"] == "share"  # the fixture states no comparison counts
    assert sum(histogram["impostor"]) == pytest.approx(1.0) and sum(histogram["genuine"]) == pytest.approx(1.0)
    assert len(histogram["edges"]) == len(histogram["genuine"]) + 1
    assert body["target_fmrs"] == [0.1]  # FMR steps of 1/40: the rule of three supports 3/40 = 0.075 and up
    assert body["reliability"] == {} and body["figures"] == {}


def test_calibration_view_of_the_shipped_bundle():
    calibration = read_calibration("bundles/face")
    view = calibration_view(calibration, [0.01])
    dev = calibration["metrics"]["dev"]
    assert view["histogram"]["unit"] == "count"
    assert sum(view["histogram"]["genuine"]) == dev["genuine"]
    assert sum(view["histogram"]["impostor"]) == dev["impostor"]
    curve = view["curve"]
    assert len(curve["distance"]) == MAX_POINTS
    assert curve["distance"][0] == calibration["operating_points"]["distance"][0]
    assert curve["fnmr"][-1] == calibration["operating_points"]["fnmr"][-1]
    assert set(view["reliability"]) == {"dev", "eval"} and len(view["reliability"]["eval"]) == 10
    assert view["figures"]["eval"]["fmr"]["text"] == calibration["metrics"]["eval"]["fmr"]["text"]
    assert view["target_fmrs"] == [0.01]


def test_calibration_endpoint_of_an_uncalibrated_bundle_is_503(tiny_bundle):
    from verifier.core.scorer import Scorer

    app = create_app({"VERIFIER_BUNDLE": str(tiny_bundle), "TESTING": True})
    scorer_holder(app).scorer = Scorer.from_bundle(tiny_bundle, backend="tf.function")
    response = app.test_client().get("/v1/calibration")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "not_calibrated"
