"""Confidence maps (Platt, isotonic) with an explicit prior, and the judges ECE, Cllr, reliability."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from calibration.confidence import (IsotonicCalibrator, LogisticCalibrator, calibrator_from_dict, cllr, ece,
                                    reliability_table)
from verifier.core.decisions import probability_same

# genuine N(1, 0.5), impostor N(3, 0.5): llr(d) = a*d + b with a = -2/0.25 = -8, b = (9-1)/(2*0.25) = 16
TRUE_A, TRUE_B = -8.0, 16.0


def gaussian_pairs(seed, n_genuine, n_impostor):
    rng = np.random.default_rng(seed)
    d = np.r_[rng.normal(1, 0.5, n_genuine), rng.normal(3, 0.5, n_impostor)]
    return d, np.r_[np.ones(n_genuine), np.zeros(n_impostor)]


def test_logistic_recovers_known_parameters():
    d, y = gaussian_pairs(0, 20_000, 20_000)
    cal = LogisticCalibrator().fit(d, y)
    assert cal.a_ == pytest.approx(TRUE_A, abs=0.4)
    assert cal.b_ == pytest.approx(TRUE_B, abs=0.8)
    assert -cal.b_ / cal.a_ == pytest.approx(2.0, abs=0.02)  # P(same) = 1/2 where the densities cross


def test_logistic_prior_correction_removes_the_fit_set_imbalance():
    d, y = gaussian_pairs(1, 5_000, 20_000)
    cal = LogisticCalibrator(prior=0.5).fit(d, y)
    assert cal.train_prior_ == 0.2
    np.testing.assert_allclose(cal.llr([1.0, 2.0, 3.0]), TRUE_A * np.array([1, 2, 3]) + TRUE_B, atol=0.8)
    assert cal.predict([2.0])[0] == pytest.approx(0.5, abs=0.05)
    # under the fit set's own prior, the output is the plain fitted sigmoid
    cal.prior = cal.train_prior_
    np.testing.assert_allclose(cal.predict([1.5, 2.5]), expit(cal.a_ * np.array([1.5, 2.5]) + cal.b_))


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_calibrated_on_held_out_sample(cls):
    cal = cls().fit(*gaussian_pairs(2, 5_000, 5_000))
    d, y = gaussian_pairs(3, 20_000, 20_000)
    probs = cal.predict(d)
    assert ece(probs, y) < 0.02
    assert cllr(probs, y) < 0.2


def test_isotonic_is_monotone_and_clipped():
    d, y = gaussian_pairs(4, 3_000, 3_000)
    cal = IsotonicCalibrator().fit(d, y)
    probs = cal.predict(np.linspace(-2, 6, 2001))
    assert np.all(np.diff(probs) <= 0)
    assert probs.min() >= 1e-6 and probs.max() <= 1 - 1e-6
    assert probs[0] > 0.99 and probs[-1] < 0.01


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_to_dict_from_dict_round_trip_is_exact(cls):
    cal = cls(prior=0.3).fit(*gaussian_pairs(5, 2_000, 6_000))
    data = json.loads(json.dumps(cal.to_dict()))
    rebuilt = calibrator_from_dict(data)
    assert type(rebuilt) is cls and rebuilt.prior == 0.3 and rebuilt.train_prior_ == cal.train_prior_
    d = np.linspace(-1, 5, 997)
    np.testing.assert_array_equal(rebuilt.predict(d), cal.predict(d))


def test_refuses_bad_inputs():
    with pytest.raises(ValueError, match="not fitted"):
        LogisticCalibrator().predict([1.0])
    with pytest.raises(ValueError, match="no impostor"):
        LogisticCalibrator().fit([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="prior"):
        IsotonicCalibrator(prior=1.0).fit([0.1, 0.9], [1, 0])
    with pytest.raises(ValueError, match="unknown calibrator kind"):
        calibrator_from_dict({"kind": "svm"})


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_unfitted_calibrators_refuse_to_predict_llr_or_serialise(cls):
    cal = cls()
    for use in (lambda: cal.predict([1.0]), lambda: cal.llr([1.0]), cal.to_dict):
        with pytest.raises(ValueError, match="not fitted"):
            use()


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
@pytest.mark.parametrize("prior", [0.0, 1.0, -0.5, 2.0])
def test_constructor_stores_the_prior_and_fit_validates_it(cls, prior):
    cal = cls(prior=prior)  # scikit-learn's convention: __init__ only stores
    assert cal.prior == prior and not hasattr(cal, "train_prior_")
    with pytest.raises(ValueError, match="prior must lie strictly between 0 and 1"):
        cal.fit(*gaussian_pairs(7, 50, 50))
    assert not hasattr(cal, "train_prior_")


def test_learned_state_ends_in_an_underscore():
    d, y = gaussian_pairs(8, 500, 500)
    logistic, isotonic = LogisticCalibrator().fit(d, y), IsotonicCalibrator().fit(d, y)
    assert set(vars(logistic)) - {"prior"} == {"a_", "b_", "train_prior_"}
    assert set(vars(isotonic)) - {"prior"} == {"x_", "y_", "train_prior_"}
    assert vars(LogisticCalibrator(prior=0.3)) == {"prior": 0.3}


def test_fit_again_replaces_the_learned_state():
    cal = LogisticCalibrator().fit(*gaussian_pairs(9, 1_000, 1_000))
    again = LogisticCalibrator().fit(*gaussian_pairs(10, 1_000, 3_000))
    assert cal.fit(*gaussian_pairs(10, 1_000, 3_000)) is cal
    assert cal.to_dict() == again.to_dict() and cal.train_prior_ == 0.25


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_from_dict_refuses_a_stored_prior_out_of_range(cls):
    data = cls().fit(*gaussian_pairs(11, 200, 200)).to_dict()
    with pytest.raises(ValueError, match="prior"):
        calibrator_from_dict(dict(data, prior=1.0))


def test_the_shipped_calibration_still_loads_and_gives_its_numbers():
    """bundles/face/calibration.json rebuilds exactly."""
    path = Path(__file__).resolve().parent.parent / "bundles" / "face" / "calibration.json"
    stored = json.loads(path.read_text())["confidence"]
    rebuilt = calibrator_from_dict(stored)
    assert rebuilt.to_dict() == stored
    d = np.linspace(0.0, 2.0, 101)
    np.testing.assert_array_equal(rebuilt.predict(d), probability_same(d, stored))


def test_logistic_stays_finite_on_separable_data():
    cal = LogisticCalibrator().fit([0.0, 0.5, 1.0, 2.0, 2.5, 3.0], [1, 1, 1, 0, 0, 0])
    assert np.isfinite([cal.a_, cal.b_]).all() and cal.a_ < 0
    assert cal.predict([0.0])[0] > 0.99 and cal.predict([3.0])[0] < 0.01


# ---- judges -----------------------------------------------------------------------------


def test_reliability_table_by_hand():
    table = reliability_table([0.05, 0.15, 0.15, 1.0], [0, 1, 0, 1], bins=10)
    assert table.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table.mean_predicted[1] == pytest.approx(0.15) and table.observed[1] == 0.5
    assert np.isnan(table.observed[2]) and table.edges[-1] == 1.0
    assert ece([0.05, 0.15, 0.15, 1.0], [0, 1, 0, 1]) == pytest.approx((0.05 + 2 * 0.35) / 4)


def test_ece_small_for_calibrated_and_large_for_overconfident():
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, 50_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert ece(p, y) < 0.01
    assert ece(np.where(p > 0.5, 1.0, 0.0), y) > 0.2


def test_cllr_of_perfect_and_uninformative_systems():
    y = np.r_[np.ones(50), np.zeros(150)]
    assert cllr(y, y) == 0.0
    assert cllr(np.full(200, 0.5), y) == pytest.approx(1.0)
    assert cllr(np.full(200, 0.3), y, prior=0.3) == pytest.approx(1.0)
    assert cllr(1 - 0.9 * y, y) > 1.0  # confidently wrong is worse than saying nothing
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cllr([1.2, 0.1], [1, 0])
