"""Fit a calibration on dev comparisons and measure it on dev and eval comparisons.

`calibrate(dev, evaluation, policy, ...)` is the whole score-level step, shared by the
pair protocol, the template (fusion) protocol and plain score files: the policy chooses
the threshold on dev, the confidence map is fitted on dev, and `describe` reports each
split with counts beside every rate and identity-bootstrap intervals where identities
are known. The result is plain JSON-ready data (non-finite floats are None).
"""

import math

import numpy as np

from calibration import metrics
from calibration.bootstrap import bootstrap_ci
from calibration.confidence import CALIBRATORS, cllr, ece, reliability_table
from calibration.protocol import CalibrationError
from verifier.core.decisions import probability_same, rule_of_three

FMR_TARGETS = (1e-2, 1e-3)
LEVEL = 0.95
# Fewer identities than this give no interval: with n identities an identity resample can
# only be one of C(2n - 1, n) multisets, and with 2 every usable one is the full set, so the
# "interval" would be the estimate itself, which reads as certainty.
MIN_BOOTSTRAP_IDENTITIES = 4
ROC_FMR_STEP = 0.01  # the stored ROC resolves FMR to 1% of itself (calibration.json stays small)
CLLR_EPS = 1e-15  # Cllr on probabilities kept this far from 0 and 1, so that it stays finite


def finite(x):
    """A float for JSON: None for NaN and +-inf (e.g. the accept-nothing threshold -inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def require_both(comparisons, where):
    """CalibrationError unless `comparisons` hold at least one genuine and one impostor."""
    n_genuine, n_impostor = int((comparisons.label == 1).sum()), int((comparisons.label == 0).sum())
    if n_genuine == 0:
        raise CalibrationError(f"{where} has no genuine comparisons ({n_impostor} impostor): "
                               "each identity needs at least 2 images")
    if n_impostor == 0:
        raise CalibrationError(f"{where} has no impostor comparisons ({n_genuine} genuine): "
                               "need at least 2 identities")


def check_support(policy, n_genuine, n_impostor, where="dev"):
    """Refuse a target rate the split's counts cannot support (rule of three), before any scoring.

    Support depends on the counts only, so the CLI calls this before embedding anything.
    """
    kind, n = {"fmr": ("impostor", n_impostor), "fnmr": ("genuine", n_genuine)}.get(policy.name, (None, None))
    if kind is None:
        return
    support = metrics.supports_rate(n, policy.target)
    if not support:
        raise CalibrationError(f"{where}: {policy.spec} needs at least {support.needed} {kind} comparisons; "
                               f"have {n} (use more identities or images, a looser target, or --eval-fraction 0 "
                               "to choose on all held-out identities)")


def choose_threshold(policy, dev, where="dev"):
    """The policy's threshold on dev (after `check_support`); CalibrationError if it accepts nothing."""
    threshold = policy.choose(dev.genuine, dev.impostor)
    if not math.isfinite(threshold):
        smallest = metrics.fmr_fnmr(dev.genuine, dev.impostor, dev.impostor.min()).fmr
        raise CalibrationError(f"{where}: no distance meets {policy.spec}: already the smallest impostor distance "
                               f"gives FMR {smallest}, so the only such threshold accepts nothing")
    return float(threshold)


def fit_confidence(kind, prior, dev, where="dev"):
    """A calibrator of `kind` ("logistic" or "isotonic") fitted on dev distances and labels."""
    try:
        return CALIBRATORS[kind](prior).fit(dev.distance, dev.label)
    except ValueError as exc:
        raise CalibrationError(f"{where}: cannot fit the {kind} confidence: {exc}") from None


def _n_identities(comparisons):
    if comparisons.id_a is None:
        return None
    return int(np.unique(np.concatenate([comparisons.id_a, comparisons.id_b])).size)


def _can_bootstrap(comparisons, n_bootstrap):
    return bool(n_bootstrap) and comparisons.id_a is not None and _n_identities(comparisons) >= MIN_BOOTSTRAP_IDENTITIES


def _interval(comparisons, statistic, n_bootstrap, seed):
    """[low, high] identity-bootstrap interval of `statistic`, or None without identities or resamples.

    Every call with one seed draws the same resamples, so all intervals of a split share them.
    """
    if not _can_bootstrap(comparisons, n_bootstrap):
        return None
    ci = bootstrap_ci(comparisons.distance, comparisons.label, comparisons.id_a, comparisons.id_b,
                      statistic, n_resamples=n_bootstrap, seed=seed, level=LEVEL)
    return [ci.low, ci.high]


def _bootstrap_note(comparisons, n_bootstrap, seed):
    """How the split's intervals were made (resamples used and skipped), or why there are none."""
    if not n_bootstrap:
        return {"intervals": None, "reason": "--bootstrap 0"}
    if comparisons.id_a is None:
        return {"intervals": None, "reason": "no identities (id_a, id_b) to resample"}
    if _n_identities(comparisons) < MIN_BOOTSTRAP_IDENTITIES:
        return {"intervals": None, "reason": f"{_n_identities(comparisons)} identities: too few for an identity "
                                             f"bootstrap (at least {MIN_BOOTSTRAP_IDENTITIES})"}
    ci = bootstrap_ci(comparisons.distance, comparisons.label, comparisons.id_a, comparisons.id_b,
                      lambda g, i: 0.0, n_resamples=n_bootstrap, seed=seed, level=LEVEL)
    return {"intervals": f"{LEVEL:.0%} percentile, identities resampled with replacement", "level": LEVEL,
            "resamples": ci.n_resamples, "skipped": ci.n_skipped, "seed": seed}


def _rate(rate, interval):
    """A Rate as JSON with its text and interval; with 0 errors also the rule-of-three bound 3/n,
    since a bootstrap of 0 errors can only return [0, 0]."""
    data = dict(rate.to_dict(), text=str(rate), ci=interval)
    if rate.errors == 0:
        data["rule_of_three"] = rule_of_three(rate.total)
    return data


def _fnmr_at_fmr(comparisons, target, n_bootstrap, seed):
    g, i = comparisons.genuine, comparisons.impostor
    support = metrics.supports_rate(i.size, target)
    if not support:
        return {"supported": False, "needed": support.needed, "have": support.have,
                "text": f"not supported: needs {support.needed} impostor comparisons, have {support.have}"}
    threshold = metrics.threshold_at_fmr(g, i, target)
    rate = metrics.fnmr_at_fmr(g, i, target)
    interval = _interval(comparisons, lambda g, i: metrics.fnmr_at_fmr(g, i, target).value, n_bootstrap, seed)
    return {"supported": True, "threshold": finite(threshold), "fnmr": _rate(rate, interval)}


def judge_confidence(confidence, comparisons):
    """Reliability table, ECE and Cllr of a confidence map on labelled comparisons.

    A probability computed under prior p can only be checked on a population that is a
    share p genuine, so the map is moved to these comparisons' own genuine share first
    (`prior_used`); what is judged is the likelihood ratio the map carries. (No bootstrap
    interval for ECE: it is biased upwards, and identity resamples only add to the bias.)
    """
    labels = comparisons.label.astype(bool)
    share = float(labels.mean())
    probs = probability_same(comparisons.distance, dict(confidence, prior=share))
    table = reliability_table(probs, labels)
    bins = [{"low": float(lo), "high": float(hi), "count": int(n), "mean_predicted": finite(p), "observed": finite(o)}
            for lo, hi, n, p, o in zip(table.edges[:-1], table.edges[1:], table.count, table.mean_predicted,
                                       table.observed)]
    bounded = np.clip(probs, CLLR_EPS, 1 - CLLR_EPS)  # a float64 sigmoid rounds to exactly 0 or 1 past |llr| ~ 37
    return {"prior_used": share, "ece": ece(probs, labels), "cllr": cllr(bounded, labels, prior=share),
            "reliability": bins}


def describe(comparisons, threshold, confidence, n_bootstrap=1000, seed=0):
    """Every reported figure for one split at a fixed threshold and confidence map."""
    g, i = comparisons.genuine, comparisons.impostor
    point = metrics.fmr_fnmr(g, i, threshold)
    eer = metrics.eer(g, i)
    return {
        "identities": _n_identities(comparisons),
        "genuine": int(g.size),
        "impostor": int(i.size),
        "forgery": int(comparisons.forgery.sum()),
        "bootstrap": _bootstrap_note(comparisons, n_bootstrap, seed),
        "threshold": threshold,
        "fmr": _rate(point.fmr, _interval(comparisons, lambda g, i: np.mean(i <= threshold), n_bootstrap, seed)),
        "fnmr": _rate(point.fnmr, _interval(comparisons, lambda g, i: np.mean(g > threshold), n_bootstrap, seed)),
        "eer": {"value": eer.value, "threshold": finite(eer.threshold), "method": eer.method,
                "ci": _interval(comparisons, lambda g, i: metrics.eer(g, i).value, n_bootstrap, seed)},
        "auc": {"value": metrics.auc(g, i), "ci": _interval(comparisons, metrics.auc, n_bootstrap, seed)},
        "fnmr_at_fmr": {f"{t:g}": _fnmr_at_fmr(comparisons, t, n_bootstrap, seed) for t in FMR_TARGETS},
        "confidence": judge_confidence(confidence, comparisons),
    }


def by_impostor_kind(comparisons, threshold):
    """FMR at the threshold and EER for skilled and random forgeries apart (signatures); None
    when the comparisons hold no skilled forgery."""
    if comparisons is None or not comparisons.forgery.any():
        return None
    out = {}
    for kind in ("skilled", "random"):
        part = comparisons.with_impostors(kind)
        if part.impostor.size == 0:
            continue
        point = metrics.fmr_fnmr(part.genuine, part.impostor, threshold)
        out[kind] = {"impostor": int(part.impostor.size), "fmr": _rate(point.fmr, None),
                     "eer": metrics.eer(part.genuine, part.impostor).value}
    return out


def operating_points(dev):
    """The dev ROC, thinned (`thin_roc`), the -inf accept-nothing row dropped."""
    curve = metrics.roc(dev.genuine, dev.impostor)
    keep = thin_roc(curve)[1:]
    return {"distance": curve.thresholds[keep].tolist(), "fmr": curve.fmr[keep].tolist(),
            "fnmr": curve.fnmr[keep].tolist()}


def thin_roc(curve):
    """Row indices of `curve` worth storing: the first and last row of every FNMR level, and
    rows so that FMR grows by at most ROC_FMR_STEP (relative) between kept rows.

    Hundreds of thousands of impostor comparisons give as many rows. Kept this way, the
    threshold looked up for any target FMR has the exact curve's FNMR and an FMR no higher.
    """
    fnmr = curve.fnmr
    n = len(fnmr)
    level_edges = np.flatnonzero(np.diff(fnmr) != 0)
    keep = np.zeros(n, bool)
    keep[[0, n - 1]] = True
    keep[level_edges] = keep[level_edges + 1] = True
    floor = 1.0 / max(curve.n_impostor, 1)
    levels = np.geomspace(floor, 1.0, int(np.ceil(np.log(1 / floor) / np.log1p(ROC_FMR_STEP))) + 1)
    first = np.searchsorted(curve.fmr, levels, side="left")
    first = first[first < n]
    keep[first] = True
    keep[np.maximum(first - 1, 0)] = True
    return np.flatnonzero(keep)


def calibrate(dev, evaluation, policy, *, confidence="logistic", prior=0.5, n_bootstrap=1000, seed=0,
              where="", impostors="all"):
    """Threshold and confidence fitted on `dev`, measured on `dev` and (if not None) `evaluation`.

    `impostors` (calibration.pairs.IMPOSTOR_KINDS) keeps only that kind of impostor comparison
    for the fit and the figures; with skilled forgeries present, every split also reports
    each kind apart ("by_impostor") at the chosen threshold.
    Returns {"policy", "impostors", "threshold", "confidence", "operating_points", "metrics": {"dev", "eval"}}.
    `where` prefixes error messages (e.g. "fusion ").
    """
    every = {"dev": dev, "eval": evaluation}
    dev = dev.with_impostors(impostors)
    evaluation = None if evaluation is None else evaluation.with_impostors(impostors)
    require_both(dev, f"{where}dev")
    if evaluation is not None:
        require_both(evaluation, f"{where}eval")
    check_support(policy, len(dev.genuine), len(dev.impostor), f"{where}dev")
    threshold = choose_threshold(policy, dev, f"{where}dev")
    calibrator = fit_confidence(confidence, prior, dev, f"{where}dev").to_dict()
    described = {name: None if part is None else describe(part, threshold, calibrator, n_bootstrap, seed)
                 for name, part in (("dev", dev), ("eval", evaluation))}
    for name, figures in described.items():
        kinds = by_impostor_kind(every[name], threshold)
        if figures is not None and kinds:
            figures["by_impostor"] = kinds
    return {
        "policy": policy.spec,
        "impostors": impostors,
        "threshold": threshold,
        "confidence": calibrator,
        "operating_points": operating_points(dev),
        "metrics": described,
    }
