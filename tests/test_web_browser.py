"""The web page in a real browser: Playwright driving Debian's chromium headless against gunicorn.

The service runs the tiny face-small bundle, calibrated for real (`python -m calibration`) on
synthetic identities, so every view has data to show, and keeps enrolled images (for the
thumbnails). Screenshots of each view go to reports/page/ (not committed) for a person to
look at. Skipped, saying why, without playwright or /usr/bin/chromium.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.live_service import running_service
from tests.synthetic import identity_images, png_bytes, write_folder
from verifier.enrollment.keys import create_key
from verifier.enrollment.store import open_store

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "reports" / "page"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def page_bundle(tmp_path_factory, tiny_bundle):
    """The tiny bundle calibrated by the calibration CLI on 8 synthetic identities."""
    root = tmp_path_factory.mktemp("page")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    data = write_folder(root / "data", n_identities=8, per_identity=6)
    subprocess.run([sys.executable, "-m", "calibration", "--bundle", str(bundle), "--data", str(data),
                    "--policy", "eer", "--bootstrap", "200", "--report", str(root / "report")],
                   check=True, capture_output=True)
    return bundle


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('page-store') / 'store.db'}"


@pytest.fixture(scope="module")
def service(page_bundle, database, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("page-service") / "gunicorn.log"
    env = {"DATABASE_URL": database, "VERIFIER_KEEP_IMAGES": "1"}
    with running_service(page_bundle, log_path, env=env, timeout=90) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])  # a test camera
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"http://127.0.0.1:{service.port}/")
    page.wait_for_function("document.getElementById('target-fmr').options.length > 1")
    yield page
    context.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """PNG files: synthetic faces, a gradient (far from any of them), a blank card, and a text file."""
    root = tmp_path_factory.mktemp("page-files")
    paths = {}
    for name, images in identity_images(n_identities=2, per_identity=4, seed=7).items():
        for i, image in enumerate(images):
            paths[f"{name}_{i}"] = image
    shape = paths["id00_0"].shape
    paths["gradient"] = np.tile(np.linspace(0, 255, shape[1]).astype(np.uint8), (shape[0], 1))
    paths["blank"] = np.full(shape, 200, np.uint8)
    for name, image in list(paths.items()):
        paths[name] = root / f"{name}.png"
        paths[name].write_bytes(png_bytes(image))
    paths["text"] = root / "notes.png"
    paths["text"].write_text("this is not an image\n")
    return paths


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def submit(page, form, result):
    """Submit the form and wait for its (hidden beforehand) result region to show the new answer."""
    page.evaluate(f"document.getElementById('{result}').hidden = true")
    page.click(f"#{form} button[type=submit]")
    page.wait_for_selector(f"#{result}:not([hidden])")


def verify(page, a, b):
    page.set_input_files("#image-a", str(a))
    page.set_input_files("#image-b", str(b))
    submit(page, "verify-form", "verify-result")
    return page.get_attribute("#verify-decision", "data-decision")


def wait_for_thumbnail(page, within, subject):
    """Wait until the subject's thumbnail <img> under `within` has loaded (a decoded JPEG)."""
    page.wait_for_function("([within, subject]) => [...document.querySelectorAll(`${within} .thumbnail img`)]"
                           ".some(image => image.alt.startsWith(`${subject}:`) && image.naturalWidth > 0)",
                           arg=[within, subject])


def test_verify_same_and_different_pairs(page, files):
    assert verify(page, files["id00_0"], files["id00_0"]) == "same"
    assert page.inner_text("#verify-decision") == "same person"
    assert "under the calibration's prior of 50.0%" in page.inner_text("#verify-confidence")
    assert "set by eer" in page.inner_text("#verify-policy")
    assert verify(page, files["id00_0"], files["gradient"]) == "different"
    assert page.inner_text("#verify-decision") == "different people"
    assert page.locator("#verify-scale svg .threshold").count() == 1
    page.select_option("#target-fmr", "0.1")
    verify(page, files["id00_0"], files["id00_1"])
    assert "set by request:target_fmr=0.1" in page.inner_text("#verify-policy")
    shot(page, "verify")


def test_a_photo_from_the_camera_is_verified(page, files):
    page.click(".camera[data-side=a]")
    page.wait_for_function("document.getElementById('camera-video').videoWidth > 0")
    page.click("#camera-take")
    page.wait_for_function("document.getElementById('image-a').files.length === 1")
    assert page.evaluate("document.getElementById('image-a').files[0].name") == "camera-a.png"
    assert page.locator("#camera").is_hidden()
    page.set_input_files("#image-b", str(files["id00_0"]))
    submit(page, "verify-form", "verify-result")
    assert page.get_attribute("#verify-decision", "data-decision") in ("same", "different")


def test_a_text_file_as_an_image_shows_the_api_message(page, files, service):
    page.set_input_files("#image-a", str(files["text"]))
    page.set_input_files("#image-b", str(files["id00_0"]))
    page.click("#verify-form button[type=submit]")
    alert = page.locator("#alert")
    alert.wait_for(state="visible")
    status, body, _ = service.multipart("/v1/verify", [("image_a", files["text"].read_bytes()),
                                                       ("image_b", files["id00_0"].read_bytes())])
    assert status == 415
    assert alert.inner_text() == body["error"]["message"]


def test_enroll_a_subject_and_verify_a_probe(page, files, service):
    page.click("#tab-subjects")
    page.fill("#create-id", "alice")
    page.click("#create-form button[type=submit]")
    page.wait_for_selector("#subjects-table td:text-is('alice')")
    page.wait_for_selector("#subjects-table .thumbnail.none:text-is('no image kept')")  # nothing enrolled yet
    page.set_input_files("#enroll-images", [str(files[f"id00_{i}"]) for i in range(3)] + [str(files["blank"])])
    page.click("#enroll-form button[type=submit]")
    page.wait_for_selector("#enroll-result li.refused")
    wait_for_thumbnail(page, "#subjects-table", "alice")
    assert page.locator("#enroll-result li.accepted").count() == 3
    assert "refused" in page.inner_text("#enroll-result li.refused")
    page.set_input_files("#probe-image", str(files["id00_3"]))
    submit(page, "probe-form", "probe-result")
    status, body, _ = service.multipart("/v1/subjects/alice/verify", [("image", files["id00_3"].read_bytes())])
    assert status == 200
    assert page.get_attribute("#probe-decision", "data-decision") == body["decision"]
    assert f"fusion {body['fusion']['rule']}" in page.inner_text("#probe-policy")
    shot(page, "subjects")

    page.click("#tab-identify")
    page.set_input_files("#identify-image", str(files["id00_3"]))
    submit(page, "identify-form", "identify-result")
    assert "alice" in page.inner_text("#identify-candidates")
    wait_for_thumbnail(page, "#identify-candidates", "alice")
    shot(page, "identify")
    page.set_input_files("#identify-image", str(files["gradient"]))
    submit(page, "identify-form", "identify-result")
    assert page.get_attribute("#identify-decision", "data-decision") == "no_match"
    assert page.inner_text("#identify-decision") == "no match"

    page.click("#tab-subjects")
    page.fill("#delete-id", "alice")
    page.click("#delete-form button[type=submit]")
    page.wait_for_selector("#status:text-is('deleted alice')")


def test_calibration_view_draws_its_curves(page):
    page.click("#tab-verify")
    page.keyboard.press("End")  # keyboard: the last tab, Calibration
    page.wait_for_selector("#chart-roc svg path.roc")
    for chart in ("roc", "det"):
        assert len(page.get_attribute(f"#chart-{chart} svg path.{chart}", "d")) > 20
        assert page.locator(f"#chart-{chart} svg circle.mark").count() == 1
    assert page.locator("#chart-hist svg rect.bar.genuine").count() > 1
    assert page.locator("#chart-hist svg line.threshold").count() == 1
    assert page.locator("#chart-reliability svg path.reliability").count() == 2
    figures = page.inner_text("#figures-table")
    assert "FMR at threshold" in figures and "/" in figures and "[" in figures
    shot(page, "calibration")


def test_a_wrong_key_shows_the_401_message(page, database):
    store = open_store(database)
    key, record = create_key(store, "browser")
    try:
        page.click("#tab-subjects")
        page.wait_for_selector("#key-form:not([hidden])")
        assert "needs an API key" in page.inner_text("#alert")
        page.fill("#key-input", "vk_wrong")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#alert:has-text('does not name an active API key')")
        shot(page, "key")
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#key-form[hidden]", state="attached")
        page.wait_for_function("document.getElementById('alert').textContent === ''")
        assert page.evaluate("sessionStorage.getItem('verifier.apiKey')") == key
    finally:
        store.revoke_key(record["id"])
        store.close()
