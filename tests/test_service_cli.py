"""`python -m verifier verify / export / serve`: answers, the fast path export, and clear exit-2 errors."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.synthetic import identity_images
from tests.test_bundle import downgrade_to_format_1
from verifier.core import fastpath


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "verifier", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory):
    """This module's own export cache, so the CLI runs leave nothing in ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(fastpath.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_images")
    paths = {}
    for name, images in identity_images(n_identities=2, per_identity=2).items():
        for i, image in enumerate(images):
            paths[f"{name}_{i}"] = root / f"{name}_{i}.png"
            cv2.imwrite(str(paths[f"{name}_{i}"]), image)
    (root / "notes.txt").write_text("not an image")
    cv2.imwrite(str(root / "tiny.png"), np.zeros((2, 2), np.uint8))
    paths["text"], paths["tiny"] = root / "notes.txt", root / "tiny.png"
    return paths


def test_verify_json_same_image(calibrated_bundle, image_files):
    done = run_cli("verify", image_files["id00_0"], image_files["id00_0"], "--bundle", calibrated_bundle, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    calibration = json.loads((calibrated_bundle / "calibration.json").read_text())
    assert answer["decision"] == "same" and answer["distance"] == pytest.approx(0.0, abs=1e-5)
    assert answer["threshold"] == calibration["threshold"] and answer["policy"] == calibration["policy"]
    assert answer["model"] == calibration["bundle_id"] and answer["calibration_id"] == calibration["calibration_id"]
    assert "agrees with model.keras" in done.stderr  # the load-time check is printed


def test_verify_text_with_overrides(calibrated_bundle, image_files):
    done = run_cli("verify", image_files["id00_0"], image_files["id01_1"], "--bundle", calibrated_bundle,
                   "--threshold", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("different: distance") and "request:threshold=0" in done.stdout
    done = run_cli("verify", image_files["id00_0"], image_files["id01_1"], "--target-fmr", "0.1",
                   env={"VERIFIER_BUNDLE": str(calibrated_bundle)})
    assert done.returncode == 0, done.stderr
    assert "request:target_fmr=0.1" in done.stdout and "threshold 0.2000" in done.stdout


@pytest.mark.parametrize("case, message", [
    ("missing file", "cannot read"),
    ("not an image", "not an image we can read"),
    ("too small", "each side must be at least"),
    ("no bundle", "bundle directory not found"),
    ("uncalibrated", "not calibrated"),
    ("unsupported fmr", "finer than the calibration supports"),
    ("both overrides", "not allowed with argument"),
])
def test_bad_input_is_one_clear_line_and_exit_2(case, message, calibrated_bundle, tiny_bundle, image_files, tmp_path):
    a = image_files["id00_0"]
    args = {
        "missing file": ("verify", a, tmp_path / "nope.png", "--bundle", calibrated_bundle),
        "not an image": ("verify", a, image_files["text"], "--bundle", calibrated_bundle),
        "too small": ("verify", a, image_files["tiny"], "--bundle", calibrated_bundle),
        "no bundle": ("verify", a, a, "--bundle", tmp_path / "no-bundle"),
        "uncalibrated": ("verify", a, a, "--bundle", tiny_bundle),
        "unsupported fmr": ("verify", a, a, "--bundle", calibrated_bundle, "--target-fmr", "1e-6"),
        "both overrides": ("verify", a, a, "--bundle", calibrated_bundle, "--threshold", "1", "--target-fmr", "0.1"),
    }[case]
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_export_upgrades_a_format_1_bundle_and_caches_an_agreeing_tflite(calibrated_bundle, tmp_path):
    bundle, cache = tmp_path / "bundle", tmp_path / "cache"
    shutil.copytree(calibrated_bundle, bundle)
    old_id = downgrade_to_format_1(bundle)
    done = run_cli("serve", "--bundle", bundle, "--port", "9")
    assert done.returncode == 2 and "python -m verifier export --bundle" in done.stderr
    done = run_cli("export", "--bundle", bundle, env={fastpath.CACHE_ENV: str(cache)})
    assert done.returncode == 0, done.stderr
    assert "max abs embedding difference vs model.keras" in done.stdout
    new_id = json.loads((bundle / "bundle.json").read_text())["bundle_id"]
    assert f"bundle id {old_id} -> {new_id}" in done.stderr
    export = cache / "exports" / new_id
    record = json.loads((export / fastpath.RECORD_FILE).read_text())
    assert record["max_abs_diff"] <= fastpath.TOLERANCE and record["bundle_id"] == new_id
    assert record["tflite_sha256"] == hashlib.sha256((export / fastpath.TFLITE_FILE).read_bytes()).hexdigest()
    assert not (bundle / fastpath.TFLITE_FILE).exists()  # the bundle holds only what was trained


def test_serve_refuses_a_missing_bundle(tmp_path):
    done = run_cli("serve", "--bundle", tmp_path / "nothing", "--port", "9")
    assert done.returncode == 2 and "bundle directory not found" in done.stderr
