"""Identity rules, dev/eval splits and the score-level fit behind `python -m calibration`."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from calibration.fit import calibrate, check_support, operating_points
from calibration.metrics import roc
from calibration.pairs import Comparisons
from calibration.policies import parse_policy
from calibration.protocol import (CalibrationError, held_out_identities, images_per_identity_cap, sample_rows,
                                  split_dev_eval)
from calibration.report import _split_lines, dumps
from verifier.core.decisions import fmr_at_threshold, threshold_at_fmr


def _data(names, fingerprint="abc"):
    return SimpleNamespace(name="data", identities=list(names), fingerprint=fingerprint)


def _recipe(train=(), validation=(), holdout=(), fingerprint="abc"):
    return {"dataset": {"fingerprint": fingerprint}, "train_identities": list(train),
            "validation_identities": list(validation), "holdout_identities": list(holdout)}


def test_training_data_gives_its_holdout_and_other_data_must_not_overlap():
    names = [f"s{k}" for k in range(6)]
    held, why = held_out_identities(_recipe(names[:3], names[3:4], names[4:]), _data(names))
    assert held == ["s4", "s5"] and "held out" in why
    assert held_out_identities(_recipe(["x"]), _data(names, "other"))[0] == names
    with pytest.raises(CalibrationError, match="validate this bundle: s3"):
        held_out_identities(_recipe(["x"], ["s3"]), _data(names, "other"))
    with pytest.raises(CalibrationError, match="folder of other identities"):
        held_out_identities(_recipe(names), _data(names))
    with pytest.raises(CalibrationError, match="does not list"):
        held_out_identities({}, _data(names))


def test_split_is_seeded_disjoint_and_needs_two_identities_each():
    names = [f"id{k}" for k in range(10)]
    dev, evaluation = split_dev_eval(names, 0.5, seed=0)
    assert len(dev) == len(evaluation) == 5 and sorted(dev + evaluation) == names
    assert (dev, evaluation) == split_dev_eval(names, 0.5, seed=0)
    assert (dev, evaluation) != split_dev_eval(names, 0.5, seed=1)
    assert split_dev_eval(names[:4], 0.1, seed=0)[1].__len__() == 2  # at least 2 for eval
    assert split_dev_eval(names[:3], 0.0, seed=0) == (names[:3], [])
    with pytest.raises(CalibrationError, match="--eval-fraction 0"):
        split_dev_eval(names[:3], 0.5, seed=0)
    with pytest.raises(CalibrationError, match="only 1 identity"):
        split_dev_eval(names[:1], 0.0, seed=0)


def test_image_cap_is_stated_and_seeded():
    assert images_per_identity_cap([10] * 10, None) == (None, "all images")
    cap, note = images_per_identity_cap([7000] * 10, None)
    assert cap == 31 and "chosen automatically" in note
    labels = np.repeat(np.arange(3), 50)
    forged = np.zeros(150, bool)
    rows = sample_rows(labels, forged, 10, seed=0)
    assert np.bincount(labels[rows]).tolist() == [10, 10, 10]
    np.testing.assert_array_equal(rows, sample_rows(labels, forged, 10, seed=0))


def _comparisons(genuine, impostor, n_ids=6, seed=0):
    rng = np.random.default_rng(seed)
    d = np.concatenate([genuine, impostor])
    label = np.concatenate([np.ones(len(genuine), np.int8), np.zeros(len(impostor), np.int8)])
    a = rng.integers(0, n_ids, d.size)
    b = np.where(label == 1, a, (a + 1 + rng.integers(0, n_ids - 1, d.size)) % n_ids)
    return Comparisons(d, label, a, b, np.zeros(d.size, bool), int(len(impostor)))


def test_calibrate_on_gaussians_hits_the_dev_target_and_reports_eval():
    rng = np.random.default_rng(0)
    dev = _comparisons(rng.normal(0, 1, 2000), rng.normal(2, 1, 4000))
    evaluation = _comparisons(rng.normal(0, 1, 2000), rng.normal(2, 1, 4000), seed=1)
    section = calibrate(dev, evaluation, parse_policy("fmr=0.01"), n_bootstrap=50)
    assert section["metrics"]["dev"]["fmr"]["value"] <= 0.01
    assert abs(section["metrics"]["eval"]["fmr"]["value"] - 0.01) < 0.01  # the 1% quantile of 4000 draws varies
    assert abs(section["metrics"]["eval"]["eer"]["value"] - 0.1587) < 0.02  # Phi(-1)
    assert section["metrics"]["eval"]["confidence"]["ece"] < 0.03
    json.loads(dumps(section))  # strict JSON: no inf, no NaN


def test_rule_of_three_beside_a_zero_error_rate():
    dev = _comparisons(np.linspace(0, 1, 50), np.linspace(2, 3, 400))
    metrics = calibrate(dev, None, parse_policy("eer"), n_bootstrap=20)["metrics"]["dev"]
    assert metrics["fmr"]["errors"] == 0 and metrics["fmr"]["rule_of_three"] == pytest.approx(3 / 400)


def test_too_few_identities_give_no_interval_and_say_why():
    rng = np.random.default_rng(0)
    few = _comparisons(rng.normal(0, 1, 200), rng.normal(2, 1, 400), n_ids=2)
    metrics = calibrate(few, None, parse_policy("eer"), n_bootstrap=50)["metrics"]["dev"]
    assert metrics["eer"]["ci"] is None and metrics["fmr"]["ci"] is None
    assert metrics["bootstrap"] == {"intervals": None,
                                    "reason": "2 identities: too few for an identity bootstrap (at least 4)"}
    assert "(no intervals: 2 identities: too few" in "\n".join(_split_lines("dev", metrics))
    enough = _comparisons(rng.normal(0, 1, 200), rng.normal(2, 1, 400), n_ids=4)
    metrics = calibrate(enough, None, parse_policy("eer"), n_bootstrap=50)["metrics"]["dev"]
    low, high = metrics["eer"]["ci"]
    assert low < high


def test_refusals_say_what_is_needed():
    with pytest.raises(CalibrationError, match="needs at least 3000 impostor comparisons; have 1000"):
        check_support(parse_policy("fmr=0.001"), 100, 1000)
    with pytest.raises(CalibrationError, match="needs at least 300 genuine"):
        check_support(parse_policy("fnmr=0.01"), 100, 10**6)
    ties = _comparisons(np.full(50, 0.5), np.zeros(400))  # every impostor at distance 0
    with pytest.raises(CalibrationError, match="accepts nothing"):
        calibrate(ties, None, parse_policy("fmr=0.01"), n_bootstrap=0)


def test_the_stored_roc_is_thinned_without_losing_an_operating_point():
    """200,000 impostor comparisons: a few thousand rows kept; a target FMR looked up on them gets
    the exact curve's FNMR at an FMR no higher than the target, and FMR is resolved to about 1%."""
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(0.6, 0.2, 800), rng.normal(1.3, 0.2, 200_000)
    distance = np.concatenate([genuine, impostor])
    label = np.concatenate([np.ones(800, np.int8), np.zeros(200_000, np.int8)])
    ids = np.zeros(len(distance), int)
    dev = Comparisons(distance, label, ids, ids, np.zeros(len(distance), bool), len(impostor))
    points = operating_points(dev)
    full = roc(genuine, impostor)
    exact = {"distance": full.thresholds[1:], "fmr": full.fmr[1:], "fnmr": full.fnmr[1:]}
    assert len(points["distance"]) < 5_000 and np.all(np.diff(points["distance"]) > 0)
    assert points["distance"][-1] == exact["distance"][-1]
    for target in (1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.3):
        kept, best = threshold_at_fmr(points, target), threshold_at_fmr(exact, target)
        assert ((genuine > kept).mean() == (genuine > best).mean()) and (impostor <= kept).mean() <= target
    for threshold in np.linspace(0.9, 1.6, 50):
        true = (impostor <= threshold).mean()
        assert true * 0.97 - 1e-5 <= fmr_at_threshold(points, threshold) <= true
