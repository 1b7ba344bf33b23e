"""`calibration.calibrate`: the library under `python -m calibration` and bench/confidence.py, called directly."""

import json

import pytest

from calibration.calibrate import calibrate_bundle, calibrate_scores
from calibration.cli import main, read_scores, summary_of
from calibration.policies import parse_policy
from calibration.protocol import CalibrationError
from calibration.report import dumps
from imagesets import load_folder
from tests.conftest import tiny_tower
from tests.synthetic import write_folder
from tests.test_calibration_cli import _write_scores
from verifier.core.bundle import save_bundle
from verifier.core.profiles import get_profile

CALIBRATION_KEYS = ["policy", "impostors", "threshold", "metric", "confidence", "operating_points", "metrics", "sizes",
                    "failure_to_acquire", "identities", "protocol", "data", "notes", "fusion"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("faces") / "faces", n_identities=8, per_identity=5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    profile = get_profile("face-small")
    path = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(path, tiny_tower(profile), profile=profile, metric="euclidean",
                recipe={"loss": "none", "seed": 0, "dataset": {"name": "x", "fingerprint": "other", "spec": "x"},
                        "train_identities": ["trainA"], "validation_identities": [], "holdout_identities": []})
    return path


def test_calibrate_bundle_returns_the_calibration_and_writes_nothing(bundle, faces):
    messages = []
    result = calibrate_bundle(bundle, load_folder(faces), parse_policy("eer"), spec="mine", n_bootstrap=20,
                              seed=1, log=messages.append)
    calibration = result.calibration
    assert list(calibration) == CALIBRATION_KEYS
    assert calibration["policy"] == "eer" and calibration["data"]["spec"] == "mine"
    assert calibration["metrics"]["dev"]["bootstrap"]["resamples"] <= 20
    assert result.source == f"bundle {bundle} ({result.bundle_id}) on {faces}"
    assert [label for label, *_ in result.splits] == ["pairs dev", "pairs eval", "fusion (mean) dev",
                                                      "fusion (mean) eval"]
    assert any(m.startswith("embedding 40 images") for m in messages)
    assert not (bundle / "calibration.json").exists()


def test_the_cli_prints_what_calibrate_bundle_returns(bundle, faces, tmp_path, capsys):
    assert main(["--bundle", str(bundle), "--data", str(faces), "--policy", "eer", "--bootstrap", "30",
                 "--dry-run", "--json", "--report", str(tmp_path / "r")]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = calibrate_bundle(bundle, load_folder(faces), parse_policy("eer"), spec=str(faces), n_bootstrap=30)
    expected = json.loads(dumps(summary_of(result, str(bundle))))
    assert printed.pop("report_dir") == str(tmp_path / "r")
    assert printed == expected


def test_calibrate_bundle_refuses_what_the_counts_cannot_support(bundle, faces):
    with pytest.raises(CalibrationError, match="fmr=0.0001 needs at least 30000 impostor comparisons"):
        calibrate_bundle(bundle, load_folder(faces), parse_policy("fmr=0.0001"), n_bootstrap=0)


def test_calibrate_scores_matches_the_cli(tmp_path, capsys):
    path = _write_scores(tmp_path / "s.csv")
    assert main(["--scores", str(path), "--policy", "fmr=0.05", "--bootstrap", "40", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = calibrate_scores(read_scores(path), parse_policy("fmr=0.05"), source=path, n_bootstrap=40)
    assert printed == json.loads(dumps(summary_of(result)))
    assert result.calibration["identities"]["eval"] and result.splits[1][1] is not None


def test_calibrate_scores_without_identities_is_dev_only(tmp_path):
    comparisons = read_scores(_write_scores(tmp_path / "s.csv", ids=False))
    result = calibrate_scores(comparisons, parse_policy("eer"), source="s.csv")
    assert result.calibration["metrics"]["eval"] is None and result.splits[1][1] is None
    with pytest.raises(CalibrationError, match="--eval-fraction needs identities"):
        calibrate_scores(comparisons, parse_policy("eer"), source="s.csv", eval_fraction=0.5)
