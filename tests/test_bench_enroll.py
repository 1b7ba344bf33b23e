"""bench/enroll.py on signatures: N references per writer through the real enrollment path, per impostor kind."""

import json
import shutil

import pytest

from bench import enroll
from tests.synthetic import write_signature_folder

# writer -> genuine images kept (each writer has 3 skilled forgeries)
GENUINE = {"writer00": 7, "writer01": 7, "writer02": 5, "writer03": 3}
FORGED = 3


@pytest.fixture(scope="module")
def signature_folder(tmp_path_factory):
    root = write_signature_folder(tmp_path_factory.mktemp("sig") / "signatures", writers=4, genuine=7,
                                  forged=FORGED, seed=2)
    for writer, keep in GENUINE.items():
        for extra in sorted((root / writer / "genuine").iterdir())[keep:]:
            extra.unlink()
    return root


def expected(n):
    """Probe and comparison counts for N references per writer, from the folder's layout."""
    writers = [w for w, g in GENUINE.items() if g >= n + 1]
    genuine = sum(GENUINE[w] - n for w in writers)
    probes = {"genuine": genuine, "skilled": FORGED * len(writers), "random": genuine * (len(writers) - 1)}
    return writers, probes


def run(capsys, argv):
    assert enroll.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_signature_enrollment_counts_and_skilled_fnmr(capsys, signature_bundle, signature_folder):
    lines, report = run(capsys, ["--bundle", str(signature_bundle), "--data", str(signature_folder),
                                 "--enroll", "1,3,5", "--backend", "tf.function"])
    assert report["benchmark"] == "enroll" and report["writers"] == 4
    assert report["fusion_rule"] == "mean" and report["fusion_rule_from"] == "calibration"
    assert report["thresholds"] == {"fusion": 0.45, "pair": 0.6}
    assert list(report["by_enroll"]) == ["1", "3", "5"]
    for n in (1, 3, 5):
        r = report["by_enroll"][str(n)]
        writers, probes = expected(n)
        assert r["writers"] == len(writers)
        assert r["left_out"]["too_few_genuine"] == sorted(set(GENUINE) - set(writers))
        assert r["left_out"]["count"] == 4 - len(writers) and r["failures_to_enrol"] == 0
        assert r["probes"] == probes
        subject, pair = r["subject"], r["pair"]
        assert subject["genuine"] == probes["genuine"] and pair["genuine"] == probes["genuine"] * n
        assert subject["skilled"]["impostor"] == probes["skilled"]
        assert subject["random"]["impostor"] == probes["random"]
        assert pair["skilled"]["impostor"] == probes["skilled"] * n
        assert pair["random"]["impostor"] == probes["random"] * n
        for kind in ("skilled", "random"):
            at = subject[kind]["fnmr_at_fmr"]
            assert at["target_fmr"] == 0.01 and at["fnmr"]["total"] == probes["genuine"]
            assert at["fmr"]["errors"] <= 0.01 * probes[kind]  # the loosest threshold with FMR <= 1%
            assert at["threshold_chosen_on"] == f"this run's {kind}-impostor scores"
            assert at["supported"] is False and at["impostors_needed"] == 300  # rule of three: too few here
            assert 0 <= subject[kind]["eer"] <= 1
            assert set(subject[kind]["calibrated"]) == {"fusion", "pair"}
            assert subject[kind]["calibrated"]["fusion"]["threshold"] == 0.45
            assert set(pair[kind]["calibrated"]) == {"pair"}
            assert pair[kind]["fnmr_at_fmr"]["fnmr"]["total"] == probes["genuine"] * n
    text = "\n".join(lines[:-1])
    assert "set on this run's skilled-impostor scores" in text and "N = 5 references: 2 writers" in text


def test_signature_enrollment_without_fusion_calibration_uses_the_mean(capsys, tmp_path, signature_bundle,
                                                                      signature_folder):
    bundle = tmp_path / "uncalibrated"
    shutil.copytree(signature_bundle, bundle)
    (bundle / "calibration.json").unlink()
    _, report = run(capsys, ["--bundle", str(bundle), "--data", str(signature_folder), "--enroll", "6",
                             "--backend", "tf.function"])
    assert report["fusion_rule"] == "mean" and report["fusion_rule_from"].startswith("default")
    assert report["thresholds"] == {"fusion": None, "pair": None}
    r = report["by_enroll"]["6"]
    assert r["writers"] == 2 and r["probes"] == {"genuine": 2, "skilled": 6, "random": 2}
    assert r["subject"]["skilled"]["calibrated"] == {} and r["subject"]["skilled"]["fnmr_at_fmr"]["fnmr"]["total"] == 2
