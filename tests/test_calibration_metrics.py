"""Score-level metrics against closed forms, brute-force references and scikit-learn."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from calibration import metrics

# ---- brute-force references: loop over every candidate threshold --------------------------


def ref_candidates(g, i):
    return [-np.inf] + sorted(set(g.tolist()) | set(i.tolist()))


def ref_rates(g, i, t):
    return sum(x <= t for x in i) / len(i), sum(x > t for x in g) / len(g)


def ref_eer(g, i):
    points = [ref_rates(g, i, t) for t in ref_candidates(g, i)]
    for (fmr0, fnmr0), (fmr1, fnmr1) in zip(points, points[1:]):
        if fmr1 >= fnmr1:
            d0, d1 = fmr0 - fnmr0, fmr1 - fnmr1
            return fmr0 + (-d0 / (d1 - d0)) * (fmr1 - fmr0)
    raise AssertionError("no crossing")


def ref_threshold_at_fmr(g, i, target):
    return max(t for t in ref_candidates(g, i) if ref_rates(g, i, t)[0] <= target)


def ref_threshold_at_fnmr(g, i, target):
    return min(t for t in ref_candidates(g, i) if ref_rates(g, i, t)[1] <= target)


def random_scores(seed, tied):
    rng = np.random.default_rng(seed)
    g, i = rng.normal(0, 1, 120), rng.normal(1.5, 1, 300)
    return (np.round(g, 1), np.round(i, 1)) if tied else (g, i)


CASES = [(seed, tied) for seed in range(3) for tied in (False, True)]

# ---- closed form ------------------------------------------------------------------------


def test_eer_of_two_gaussians_matches_closed_form():
    # genuine N(0,1), impostor N(2z,1): the curves cross at d = z, where both rates are Phi(-z)
    z, n = 1.0, 200_000
    rng = np.random.default_rng(42)
    result = metrics.eer(rng.normal(0, 1, n), rng.normal(2 * z, 1, n))
    assert result.value == pytest.approx(norm.cdf(-z), abs=0.004)
    assert result.threshold == pytest.approx(z, abs=0.02)
    assert "linear interpolation" in result.method


# ---- brute force ------------------------------------------------------------------------


@pytest.mark.parametrize("seed,tied", CASES)
def test_eer_matches_brute_force(seed, tied):
    g, i = random_scores(seed, tied)
    result = metrics.eer(g, i)
    assert result.value == pytest.approx(ref_eer(g, i), abs=1e-9)
    lo, hi = result.bracket
    assert lo.fmr.value < lo.fnmr.value and hi.fmr.value >= hi.fnmr.value
    assert min(lo.fmr.value, hi.fmr.value) <= result.value <= max(lo.fnmr.value, hi.fnmr.value)
    assert result.threshold in (lo.threshold, hi.threshold)


@pytest.mark.parametrize("seed,tied", CASES)
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.29, 0.5])
def test_thresholds_at_targets_match_brute_force(seed, tied, target):
    g, i = random_scores(seed, tied)
    assert metrics.threshold_at_fmr(g, i, target) == ref_threshold_at_fmr(g, i, target)
    assert metrics.threshold_at_fnmr(g, i, target) == ref_threshold_at_fnmr(g, i, target)
    point = metrics.fmr_fnmr(g, i, metrics.threshold_at_fmr(g, i, target))
    assert metrics.fnmr_at_fmr(g, i, target) == point.fnmr and point.fmr.value <= target


@pytest.mark.parametrize("seed,tied", CASES)
def test_roc_rows_match_brute_force_rates(seed, tied):
    g, i = random_scores(seed, tied)
    curve = metrics.roc(g, i)
    assert curve.thresholds.tolist() == ref_candidates(g, i)
    for k in range(0, len(curve.thresholds), 7):
        fmr, fnmr = ref_rates(g, i, curve.thresholds[k])
        assert (curve.fmr[k], curve.fnmr[k]) == (fmr, fnmr)
        assert curve.point(k).fmr.errors == round(fmr * len(i))


# ---- scikit-learn -----------------------------------------------------------------------


@pytest.mark.parametrize("seed,tied", CASES)
def test_roc_and_auc_agree_with_sklearn(seed, tied):
    g, i = random_scores(seed, tied)
    labels = np.r_[np.ones(g.size), np.zeros(i.size)]
    scores = -np.r_[g, i]  # sklearn: larger score = more genuine
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    curve = metrics.roc(g, i)
    np.testing.assert_array_equal(curve.thresholds, -thr)
    np.testing.assert_allclose(curve.fmr, fpr, atol=1e-12)
    np.testing.assert_allclose(1 - curve.fnmr, tpr, atol=1e-12)
    assert metrics.auc(g, i) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# ---- ties and small hand cases -----------------------------------------------------------


def test_step_curve_with_ties_by_hand():
    curve = metrics.roc([0.0, 1.0, 1.0], [1.0, 2.0])
    assert curve.thresholds.tolist() == [-np.inf, 0.0, 1.0, 2.0]
    assert curve.false_matches.tolist() == [0, 0, 1, 2]
    assert curve.false_non_matches.tolist() == [3, 2, 0, 0]
    assert metrics.auc([0.0, 1.0, 1.0], [1.0, 2.0]) == pytest.approx((1 + 1 + 0.5 + 1 + 0.5 + 1) / 6)


def test_all_scores_tied_gives_half():
    result = metrics.eer([1.0, 1.0], [1.0, 1.0, 1.0])
    assert result.value == 0.5 and result.threshold == 1.0
    assert metrics.auc([1.0, 1.0], [1.0]) == 0.5


def test_perfect_separation():
    result = metrics.eer([0.1, 0.2], [0.8, 0.9])
    assert result.value == 0.0 and 0.2 <= result.threshold < 0.8
    assert metrics.auc([0.1, 0.2], [0.8, 0.9]) == 1.0


def test_accept_is_distance_at_or_below_threshold():
    point = metrics.fmr_fnmr([0.5, 1.0], [1.0, 1.5], threshold=1.0)
    assert (point.fmr.errors, point.fmr.total, point.fnmr.errors, point.fnmr.total) == (1, 2, 0, 2)


def test_inputs_are_not_modified():
    g, i = np.array([3.0, 1.0, 2.0]), np.array([5.0, 4.0])
    metrics.roc(g, i)
    assert g.tolist() == [3.0, 1.0, 2.0] and i.tolist() == [5.0, 4.0]


# ---- rates, DET and the rule of three -----------------------------------------------------


def test_rate_prints_percent_with_counts():
    assert str(metrics.Rate(41, 4500)) == "0.9% (41/4500)"
    assert str(metrics.Rate(54, 4500)) == "1.2% (54/4500)"
    assert str(metrics.Rate(0, 300)) == "0.0% (0/300)"
    assert str(metrics.Rate(3, 30000)) == "0.01% (3/30000)"
    assert float(metrics.Rate(1, 4)) == 0.25
    assert metrics.Rate(1, 4).to_dict() == {"errors": 1, "total": 4, "value": 0.25}
    with pytest.raises(ValueError):
        metrics.Rate(5, 4)


def test_det_is_probit_of_rates_and_finite():
    g, i = random_scores(0, tied=False)
    curve, points = metrics.roc(g, i), metrics.det(g, i)
    assert np.isfinite(points.fmr_probit).all() and np.isfinite(points.fnmr_probit).all()
    inner = (curve.fmr > 0) & (curve.fmr < 1)
    np.testing.assert_allclose(points.fmr_probit[inner], norm.ppf(curve.fmr[inner]))
    assert np.all(np.diff(points.fmr_probit) >= 0) and np.all(np.diff(points.fnmr_probit) <= 0)


def test_rule_of_three():
    support = metrics.supports_rate(4500, 1e-4)
    assert not support and support.needed == 30000 and support.have == 4500
    assert metrics.supports_rate(300, 0.01) and not metrics.supports_rate(299, 0.01)
    assert metrics.supports_rate(3000, 0.001).needed == 3000
    with pytest.raises(ValueError):
        metrics.supports_rate(100, 0)


# ---- degenerate inputs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "genuine,impostor,message",
    [
        ([], [1.0], "no genuine"),
        ([0.5], [], "no impostor"),
        ([0.5, np.nan], [1.0], "genuine distances contain 1 NaN/inf"),
        ([0.5], [1.0, np.inf], "impostor distances contain 1 NaN/inf"),
        ([[0.5]], [1.0], "1-D"),
    ],
)
@pytest.mark.parametrize("fn", [metrics.roc, metrics.eer, metrics.auc, metrics.det])
def test_degenerate_inputs_raise_clear_errors(fn, genuine, impostor, message):
    with pytest.raises(ValueError, match=message):
        fn(genuine, impostor)


def test_labelled_inputs_need_both_classes_and_binary_labels():
    with pytest.raises(ValueError, match="no impostor"):
        metrics.check_labelled([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be"):
        metrics.check_labelled([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="one length"):
        metrics.check_labelled([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.fmr_fnmr([0.1], [0.2], np.nan)
    with pytest.raises(ValueError, match="target"):
        metrics.threshold_at_fmr([0.1], [0.2], 1.5)
