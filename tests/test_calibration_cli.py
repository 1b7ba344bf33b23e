"""`python -m calibration` end to end on a tiny bundle, synthetic folders and score files.

The CLI runs in-process (`main(argv)`) so TensorFlow loads once; refusals must exit 2
with one line on stderr that says why.
"""

import json

import numpy as np
import pytest

from calibration.cli import main
from imagesets import load_folder
from tests.conftest import tiny_tower
from tests.synthetic import write_folder, write_signature_folder
from verifier.core.bundle import load_bundle, save_bundle
from verifier.core.decisions import fmr_at_threshold, probability_same, threshold_at_fmr
from verifier.core.profiles import get_profile

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--bootstrap", "50"]


@pytest.fixture(scope="module")
def tower():
    return tiny_tower(get_profile("face-small"))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """8 synthetic identities (id00..id07) x 5 images: never seen by any test bundle below."""
    return write_folder(tmp_path_factory.mktemp("faces") / "faces", n_identities=8, per_identity=5)


def _bundle(path, tower, *, train=("trainA", "trainB"), holdout=(), fingerprint="other-data"):
    profile = get_profile("face-small")
    save_bundle(path, tower, profile=profile, metric="euclidean",
                recipe={"loss": "none", "seed": 0, "dataset": {"name": "x", "fingerprint": fingerprint, "spec": "x"},
                        "train_identities": list(train), "validation_identities": [],
                        "holdout_identities": list(holdout)})
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bundle_on_a_folder_of_new_identities_writes_a_usable_calibration(tmp_path, tower, faces, capsys):
    bundle = _bundle(tmp_path / "b", tower)
    report = tmp_path / "report"
    code, out, err = _run(capsys, "--bundle", bundle, "--data", faces, "--report", report, "--json", *FAST)
    assert code == 0, err
    summary = json.loads(out)  # stdout holds the JSON and nothing else
    assert summary["policy"] == "eer" and summary["sizes"]["identities"] == {"dev": 4, "eval": 4}
    assert sorted(summary["identities"]["dev"] + summary["identities"]["eval"]) == [f"id{k:02d}" for k in range(8)]
    assert summary["metrics"]["eval"]["genuine"] == 4 * 10 and summary["metrics"]["eval"]["impostor"] == 6 * 25
    assert "(" in summary["metrics"]["eval"]["fmr"]["text"]  # "x% (errors/total)"
    assert summary["metrics"]["eval"]["fnmr_at_fmr"]["0.001"]["supported"] is False

    loaded = load_bundle(bundle, with_model=False)
    cal = loaded.calibration
    assert cal["calibration_id"] == summary["calibration_id"] and cal["bundle_id"] == loaded.bundle_id
    assert cal["metric"] == "euclidean" and cal["data"]["fingerprint"] == load_folder(faces).fingerprint
    points = cal["operating_points"]
    assert np.all(np.diff(points["distance"]) > 0) and np.all(np.isfinite(points["distance"]))
    p = probability_same([0.0, cal["threshold"], 10.0], cal["confidence"])
    assert p[0] >= p[1] >= p[2]
    loose = threshold_at_fmr(points, 0.5)
    assert loose is not None and fmr_at_threshold(points, loose) <= 0.5
    fusion = cal["fusion"]
    assert fusion["rule"] == "mean" and fusion["templates_per_subject"] == 3 and fusion["policy"] == "eer"
    assert {"threshold", "confidence", "operating_points", "metrics"} <= set(fusion)

    for name in ("roc.png", "det.png", "histogram.png"):
        assert (report / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((report / "report.json").read_text())["calibration_id"] == cal["calibration_id"]


def test_text_summary_and_dry_run(tmp_path, tower, faces, capsys):
    bundle = _bundle(tmp_path / "b", tower)
    code, out, err = _run(capsys, "--bundle", bundle, "--data", faces, "--dry-run", "--report", tmp_path / "r",
                          "--policy", "cost=1:1:0.5", "--confidence", "isotonic", "--bootstrap", "0")
    assert code == 0, err
    assert "policy cost=1:1:0.5" in out and "FMR  at threshold" in out and "/150)" in out
    assert not (bundle / "calibration.json").exists()


def test_training_data_uses_only_its_held_out_identities(tmp_path, tower, faces, capsys):
    fingerprint = load_folder(faces).fingerprint
    held = ["id00", "id02", "id04", "id06"]
    bundle = _bundle(tmp_path / "b", tower, train=["id01", "id03", "id05", "id07"], holdout=held,
                     fingerprint=fingerprint)
    code, out, err = _run(capsys, "--bundle", bundle, "--data", faces, "--report", tmp_path / "r", "--json", *FAST)
    assert code == 0, err
    identities = json.loads(out)["identities"]
    assert sorted(identities["dev"] + identities["eval"]) == held


@pytest.mark.parametrize("case, expected", [
    ("overlap", "were used to train or validate this bundle: id01, id03."),
    ("no-holdout", "calibrate on a folder of other identities"),
    ("unsupported", "dev: fmr=0.0001 needs at least 30000 impostor comparisons; have 150"),
    ("one-identity", "only 1 identity"),
    ("three-identities", "--eval-fraction 0"),
    ("bad-policy", "unknown or malformed policy"),
    ("one-image-each", "dev has no genuine comparisons"),
])
def test_refusals_exit_2_with_one_clear_line(tmp_path, tower, faces, capsys, case, expected):
    data, extra = faces, []
    bundle = _bundle(tmp_path / "b", tower)
    if case == "overlap":
        bundle = _bundle(tmp_path / "b", tower, train=["id01", "id03", "someone"])
    elif case == "no-holdout":
        bundle = _bundle(tmp_path / "b", tower, train=[f"id{k:02d}" for k in range(8)],
                         fingerprint=load_folder(faces).fingerprint)
    elif case == "unsupported":
        extra = ["--policy", "fmr=0.0001"]
    elif case == "one-identity":
        data = write_folder(tmp_path / "one", n_identities=1, per_identity=4)
    elif case == "three-identities":
        data = write_folder(tmp_path / "three", n_identities=3, per_identity=4)
    elif case == "one-image-each":
        data = write_folder(tmp_path / "single", n_identities=6, per_identity=1)
    elif case == "bad-policy":
        extra = ["--policy", "fmr"]
    code, out, err = _run(capsys, "--bundle", bundle, "--data", data, "--report", tmp_path / "r", *extra, *FAST)
    assert code == 2 and out == ""
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (bundle / "calibration.json").exists()


def test_eval_fraction_zero_reports_dev_only_and_says_so(tmp_path, tower, capsys):
    data = write_folder(tmp_path / "three", n_identities=3, per_identity=4)
    bundle = _bundle(tmp_path / "b", tower)
    code, out, err = _run(capsys, "--bundle", bundle, "--data", data, "--eval-fraction", "0",
                          "--report", tmp_path / "r", "--json", *FAST)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["metrics"]["eval"] is None and summary["identities"]["eval"] == []
    assert any("no eval split" in note for note in summary["notes"])


def test_signature_forgeries_are_impostor_comparisons(tmp_path, tower, capsys):
    data = write_signature_folder(tmp_path / "sig", writers=4, genuine=5, forged=3)
    bundle = _bundle(tmp_path / "b", tower)
    code, out, err = _run(capsys, "--bundle", bundle, "--data", data, "--report", tmp_path / "r", "--json", *FAST)
    assert code == 0, err
    sizes = json.loads(out)["sizes"]
    assert sizes["forgery"] == {"dev": 2 * 3 * 5, "eval": 2 * 3 * 5}  # 3 forgeries x 5 genuine, 2 writers per split
    assert sizes["impostor"]["dev"] == 25 + 30 and sizes["genuine"]["dev"] == 2 * 10


def _write_scores(path, n_ids=8, per=40, seed=0, ids=True):
    """Gaussian scores: genuine N(0.4, 0.1), impostor N(0.9, 0.1), between identities id0..id{n-1}."""
    rng = np.random.default_rng(seed)
    lines = ["label,distance,id_a,id_b" if ids else "distance,label"]
    for k in range(n_ids):
        for _ in range(per):
            other = (k + 1 + rng.integers(n_ids - 1)) % n_ids
            g, i = rng.normal(0.4, 0.1), rng.normal(0.9, 0.1)
            lines += [f"1,{g},id{k},id{k}", f"0,{i},id{k},id{other}"] if ids else [f"{g},1", f"{i},0"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_scores_file_end_to_end(tmp_path, capsys):
    scores = _write_scores(tmp_path / "s.csv")
    code, out, err = _run(capsys, "--scores", scores, "--policy", "fmr=0.05", "--json", "--report", tmp_path / "r",
                          *FAST)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["policy"] == "fmr=0.05" and summary["metrics"]["eval"] is not None
    assert summary["metrics"]["dev"]["fmr"]["value"] <= 0.05
    assert summary["metrics"]["eval"]["fmr"]["ci"] is not None
    assert 0.3 < summary["threshold"] < 0.9
    assert (tmp_path / "r" / "det.png").read_bytes()[:8] == PNG_MAGIC


def test_scores_without_identities_are_dev_only(tmp_path, capsys):
    scores = _write_scores(tmp_path / "s.csv", ids=False)
    code, out, err = _run(capsys, "--scores", scores, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["metrics"]["eval"] is None and summary["metrics"]["dev"]["fmr"]["ci"] is None
    assert summary["notes"] and abs(summary["metrics"]["dev"]["eer"]["value"] - 0.006) < 0.02


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("score,label\n0.1,1\n", "lacks distance"),
    ("label,distance\n1,0.1\n2,0.5\n", "line 3: label must be 1 (genuine) or 0 (impostor)"),
    ("label,distance\n1,abc\n0,0.5\n", "line 2: distance 'abc' is not a number"),
    ("label,distance\n1,nan\n0,0.5\n", "line 2: distance 'nan' is not finite"),
    ("label,distance\n1,0.1\n1,0.2\n", "no impostor comparisons"),
    ("label,distance\n1,0.1,7\n", "line 2: 3 fields, the header has 2"),
    ("label,distance,id_a\n1,0.1,a\n", "give both id_a and id_b"),
    ("label,distance,id_a,id_b\n1,0.1,a,b\n0,0.5,a,b\n", "needs id_a == id_b"),
    ("label,distance\n", "no comparisons"),
])
def test_bad_score_files_are_refused_clearly(tmp_path, capsys, text, expected):
    path = tmp_path / "s.csv"
    path.write_text(text)
    code, out, err = _run(capsys, "--scores", path)
    assert code == 2 and out == "" and expected in err and len(err.strip().splitlines()) == 1


def test_argument_errors(tmp_path, capsys):
    assert _run(capsys, "--scores", tmp_path / "missing.csv")[0] == 2
    code, _, err = _run(capsys, "--scores", tmp_path / "x.csv", "--data", "orl")
    assert code == 2 and "leave out --bundle and --data" in err
    code, _, err = _run(capsys, "--data", "orl")
    assert code == 2 and "--bundle DIR" in err


def test_threshold_chosen_on_skilled_forgeries_is_recorded_and_each_kind_reported(tmp_path, tower, capsys):
    data = write_signature_folder(tmp_path / "sig", writers=4, genuine=5, forged=3)
    bundle = _bundle(tmp_path / "b", tower)
    code, out, err = _run(capsys, "--bundle", bundle, "--data", data, "--impostors", "skilled",
                          "--report", tmp_path / "r", "--json", *FAST)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["impostors"] == "skilled"
    dev = summary["metrics"]["dev"]
    assert dev["impostor"] == 2 * 3 * 5 == dev["forgery"]  # only the skilled forgeries chose the threshold
    assert dev["by_impostor"]["skilled"]["impostor"] == 30 and dev["by_impostor"]["random"]["impostor"] == 25
    assert json.loads((bundle / "calibration.json").read_text())["impostors"] == "skilled"
    code, out, err = _run(capsys, "--bundle", bundle, "--data", data, "--impostors", "random",
                          "--report", tmp_path / "r2", *FAST)
    assert code == 0, err
    assert "on random forgeries" in out and "skilled forgeries  FMR at threshold" in out


def test_skilled_impostors_on_data_without_forgeries_is_refused(tmp_path, tower, faces, capsys):
    bundle = _bundle(tmp_path / "b", tower)
    code, out, err = _run(capsys, "--bundle", bundle, "--data", faces, "--impostors", "skilled", *FAST)
    assert code == 2 and "needs skilled forgeries" in err and "Traceback" not in err
