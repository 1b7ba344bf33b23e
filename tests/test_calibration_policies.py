"""Threshold policies: parsing, hitting their targets on dev data, refusing what data can't support."""

import numpy as np
import pytest

from calibration import metrics
from calibration.policies import CostPolicy, FmrPolicy, PolicyError, parse_policy


def dev_scores(seed=0, n_genuine=1000, n_impostor=4500, tied=False):
    rng = np.random.default_rng(seed)
    g, i = rng.normal(0, 1, n_genuine), rng.normal(2.5, 1, n_impostor)
    return (np.round(g, 1), np.round(i, 1)) if tied else (g, i)


@pytest.mark.parametrize(
    "text,name,spec",
    [
        ("eer", "eer", "eer"),
        (" EER ", "eer", "eer"),
        ("fmr=0.001", "fmr", "fmr=0.001"),
        ("FMR = 1e-2", "fmr", "fmr=0.01"),
        ("fnmr=0.05", "fnmr", "fnmr=0.05"),
        ("cost=1:10:0.5", "cost", "cost=1:10:0.5"),
        ("cost=1.5:2:0.01", "cost", "cost=1.5:2:0.01"),
    ],
)
def test_parse_gives_name_and_canonical_spec(text, name, spec):
    policy = parse_policy(text)
    assert (policy.name, policy.spec) == (name, spec)
    assert parse_policy(policy.spec) == policy


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "unknown or malformed"),
        ("far=0.01", "unknown or malformed"),
        ("eer=0.1", "unknown or malformed"),
        ("fmr", "unknown or malformed"),
        ("fmr=", "unknown or malformed"),
        ("fmr=abc", "not a number"),
        ("fmr=nan", "not a finite number"),
        ("fmr=0", "strictly between 0 and 1"),
        ("fmr=1", "strictly between 0 and 1"),
        ("fnmr=-0.1", "strictly between 0 and 1"),
        ("cost=1:10", "expected cost="),
        ("cost=1:10:0.5:3", "expected cost="),
        ("cost=0:10:0.5", "costs must be positive"),
        ("cost=1:10:1.5", "p_genuine must lie strictly between 0 and 1"),
    ],
)
def test_malformed_or_out_of_range_specs_are_refused(text, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)
    assert issubclass(PolicyError, ValueError)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("target", [0.001, 0.01, 0.1])
def test_fmr_policy_is_loosest_threshold_meeting_target(target, tied):
    g, i = dev_scores(tied=tied)
    t = parse_policy(f"fmr={target}").choose(g, i)
    assert metrics.fmr_fnmr(g, i, t).fmr.value <= target
    curve = metrics.roc(g, i)
    looser = curve.thresholds[curve.thresholds > t]
    assert metrics.fmr_fnmr(g, i, looser[0]).fmr.value > target


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_fnmr_policy_is_strictest_threshold_meeting_target(target, tied):
    g, i = dev_scores(tied=tied)
    t = parse_policy(f"fnmr={target}").choose(g, i)
    assert metrics.fmr_fnmr(g, i, t).fnmr.value <= target
    curve = metrics.roc(g, i)
    stricter = curve.thresholds[curve.thresholds < t]
    assert metrics.fmr_fnmr(g, i, stricter[-1]).fnmr.value > target


@pytest.mark.parametrize("spec", ["cost=1:1:0.5", "cost=10:1:0.5", "cost=1:10:0.2"])
def test_cost_policy_minimises_expected_cost(spec):
    g, i = dev_scores(n_genuine=200, n_impostor=300, tied=True)
    policy = parse_policy(spec)

    def cost_at(threshold):
        point = metrics.fmr_fnmr(g, i, threshold)
        return policy.expected_cost(point.fmr.value, point.fnmr.value)

    best = min(cost_at(c) for c in metrics.roc(g, i).thresholds)
    assert cost_at(policy.choose(g, i)) == pytest.approx(best, abs=1e-12)


def test_cost_policy_moves_threshold_with_costs():
    g, i = dev_scores()
    strict = CostPolicy(100, 1, 0.5).choose(g, i)
    lenient = CostPolicy(1, 100, 0.5).choose(g, i)
    assert strict < lenient


def test_eer_policy_uses_eer_threshold():
    g, i = dev_scores()
    assert parse_policy("eer").choose(g, i) == metrics.eer(g, i).threshold


def test_threshold_chosen_on_dev_holds_on_eval():
    dev, eval_ = dev_scores(seed=1, n_impostor=50_000), dev_scores(seed=2, n_impostor=50_000)
    t = FmrPolicy(0.01).choose(*dev)
    assert metrics.fmr_fnmr(*eval_, t).fmr.value == pytest.approx(0.01, abs=0.002)


def test_unsupported_targets_are_refused_with_needed_count():
    g, i = dev_scores(n_genuine=1000, n_impostor=4500)
    message = "^fmr=0.0001 needs at least 30000 impostor comparisons; have 4500$"
    with pytest.raises(PolicyError, match=message):
        parse_policy("fmr=0.0001").choose(g, i)
    with pytest.raises(PolicyError, match="^fnmr=0.001 needs at least 3000 genuine comparisons; have 1000$"):
        parse_policy("fnmr=0.001").choose(g, i)
    parse_policy("fmr=0.001").choose(g, i)  # 3000 <= 4500: supported


def test_degenerate_data_raises_value_error():
    with pytest.raises(ValueError, match="no impostor"):
        parse_policy("eer").choose([0.1, 0.2], [])
    with pytest.raises(ValueError, match="no genuine"):
        parse_policy("fmr=0.1").choose([], [0.1] * 100)


def test_eer_policy_takes_the_middle_of_the_gap_when_the_classes_do_not_overlap():
    genuine, impostor = np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.9])
    assert metrics.eer(genuine, impostor).threshold == 0.3  # the edge of the gap
    assert parse_policy("eer").choose(genuine, impostor) == pytest.approx(0.5)
