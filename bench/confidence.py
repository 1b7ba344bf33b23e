"""Does a threshold chosen on dev identities hold on eval identities, and is the confidence calibrated?

    python bench/confidence.py [--bundle bundles/face] [--data SPEC] [--seed 0] [--splits 10]
        [--bootstrap 1000] [--confidence logistic|isotonic] [--max-images-per-identity N]

On identities the bundle never trained on (its held-out ones of the data it trained on, which
is the default --data): the images are embedded once and every pair scored; then for each
split seed the identities are split into dev and eval, the `fmr=0.01` policy chooses the
threshold on dev pairs, and the eval FMR at that threshold is reported with its
identity-bootstrap 95% interval, with whether the 1% target lies inside it and whether it lies
inside the dev interval; and the ECE of the confidence (logistic unless `--confidence`) on
eval pairs (goal <= 0.03). One dev/eval split is a noisy draw: the headline is split seed
`--seed`, and `--splits` further seeds show the spread.
Nothing is written into the bundle. The last line is one JSON object.
"""

import argparse
import json
import statistics
import sys
import time

from calibration.calibrate import calibrate_scores, embed_acquired
from calibration.confidence import CALIBRATORS, DEFAULT_CONFIDENCE
from calibration.pairs import pair_comparisons
from calibration.policies import parse_policy
from calibration.protocol import held_out_sample
from imagesets import load_dataset
from verifier.core.bundle import read_meta
from verifier.core.errors import VerifierError
from verifier.settings import DEFAULT_BUNDLE

POLICY = "fmr=0.01"
ECE_GOAL = 0.03


def _log(message):
    print(message, file=sys.stderr)


def _inside(x, interval):
    return interval is not None and interval[0] <= x <= interval[1]


def _pct(interval):
    return "n/a" if interval is None else f"[{100 * interval[0]:.2f}%, {100 * interval[1]:.2f}%]"


def held_out_comparisons(bundle, spec, max_images_per_identity, seed):
    """(every pair of the bundle's held-out identities of `spec`, scored once; a line saying which)."""
    meta = read_meta(bundle)
    data = load_dataset(spec or meta["recipe"]["dataset"]["spec"])
    _, why, held, rows, image_note = held_out_sample(meta.get("recipe") or {}, data, max_images_per_identity, seed)
    emb, acquired = embed_acquired(bundle, meta, [held.images[i] for i in rows], _log)
    rows = rows[acquired]
    comparisons = pair_comparisons(emb, held.labels[rows], held.forged[rows], meta["metric"])
    return comparisons, f"bundle {bundle} ({meta['bundle_id']}): {why}, {image_note}"


def one_split(comparisons, source, seed, bootstrap, confidence):
    """Calibrate at POLICY with one dev/eval split seed; returns (Calibrated, figures)."""
    policy = parse_policy(POLICY)
    result = calibrate_scores(comparisons, policy, source=source, eval_fraction=0.5, confidence=confidence,
                              n_bootstrap=bootstrap, seed=seed)
    calibration = result.calibration
    dev, evaluation = calibration["metrics"]["dev"], calibration["metrics"]["eval"]
    return result, {
        "seed": seed, "threshold": calibration["threshold"],
        "dev_fmr": dev["fmr"]["value"], "dev_fmr_ci": dev["fmr"]["ci"],
        "eval_fmr": evaluation["fmr"]["value"],
        "eval_fmr_counts": [evaluation["fmr"]["errors"], evaluation["fmr"]["total"]],
        "eval_fmr_ci": evaluation["fmr"]["ci"],
        "target_in_eval_ci": _inside(policy.target, evaluation["fmr"]["ci"]),
        "eval_fmr_in_dev_ci": _inside(evaluation["fmr"]["value"], dev["fmr"]["ci"]),
        "eval_fnmr": evaluation["fnmr"]["value"], "eval_eer": evaluation["eer"]["value"],
        "dev_ece": dev["confidence"]["ece"], "eval_ece": evaluation["confidence"]["ece"],
        "eval_cllr": evaluation["confidence"]["cllr"],
    }


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=DEFAULT_BUNDLE)
    p.add_argument("--data", help="orl or a folder (default: the data the bundle trained on, for its held-out identities)")
    p.add_argument("--max-images-per-identity", type=int,
                   help="seeded sample of images per identity (default: as python -m calibration)")
    p.add_argument("--seed", type=int, default=0, help="the headline split seed")
    p.add_argument("--splits", type=int, default=10, help="split seeds in all (seed, seed+1, ...)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--confidence", choices=sorted(CALIBRATORS), default=DEFAULT_CONFIDENCE,
                   help="map from distance to P(same) whose eval ECE is judged (default: as python -m calibration)")
    return p


def print_headline(result, seed):
    """The headline split's threshold and its dev and eval figures."""
    calibration = result.calibration
    print(f"{result.source}: policy {POLICY} -> threshold {calibration['threshold']:.6g} (split seed {seed})")
    print(f"{'split':<6}{'ids':>4}  {'FMR at threshold':<22}{'95% CI':<20}{'FNMR at threshold':<22}"
          f"{'EER':>8}{'ECE':>8}{'Cllr':>8}")
    for name in ("dev", "eval"):
        m = calibration["metrics"][name]
        print(f"{name:<6}{m['identities']:>4}  {m['fmr']['text']:<22}{_pct(m['fmr']['ci']):<20}"
              f"{m['fnmr']['text']:<22}{100 * m['eer']['value']:>7.2f}%{m['confidence']['ece']:>8.4f}"
              f"{m['confidence']['cllr']:>8.4f}")


def print_spread(runs):
    """One line per split seed: how far the eval figures move between draws."""
    print(f"\n{'seed':>4}  {'eval FMR':>9}  {'95% CI':<18}{'1% inside':>10}{'eval ECE':>10}{'eval EER':>10}")
    for _, r in runs:
        print(f"{r['seed']:>4}  {100 * r['eval_fmr']:>8.2f}%  {_pct(r['eval_fmr_ci']):<18}"
              f"{str(r['target_in_eval_ci']):>10}{r['eval_ece']:>10.4f}{100 * r['eval_eer']:>9.2f}%")


def result_line(runs, opts, seconds):
    """The JSON result: the headline split's figures and the counts over all splits."""
    result, head = runs[0]
    eces = [r["eval_ece"] for _, r in runs]
    return {
        "bench": "calibration", "source": result.source, "policy": POLICY, "confidence": opts.confidence,
        "identities": {name: len(ids) for name, ids in result.calibration["identities"].items()},
        "genuine": result.calibration["sizes"]["genuine"], "impostor": result.calibration["sizes"]["impostor"],
        "bootstrap": opts.bootstrap, **head,
        "ece_goal": ECE_GOAL, "ece_ok": head["eval_ece"] <= ECE_GOAL,
        "splits": len(runs), "target_in_eval_ci_splits": sum(r["target_in_eval_ci"] for _, r in runs),
        "eval_ece_median": statistics.median(eces), "eval_ece_range": [min(eces), max(eces)],
        "ece_ok_splits": sum(e <= ECE_GOAL for e in eces),
        "seconds": round(seconds, 1),
    }


def main(argv=None):
    opts = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        comparisons, source = held_out_comparisons(opts.bundle, opts.data, opts.max_images_per_identity, opts.seed)
        _log(f"{source}: {len(comparisons):,} comparisons")
        runs = [one_split(comparisons, source, opts.seed + k, opts.bootstrap, opts.confidence)
                for k in range(max(1, opts.splits))]
    except VerifierError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print_headline(runs[0][0], opts.seed)
    if len(runs) > 1:
        print_spread(runs)
    result = result_line(runs, opts, time.perf_counter() - start)
    head = runs[0][1]
    print(f"\nseed {opts.seed}: target 1% inside the eval FMR 95% CI: {head['target_in_eval_ci']}; eval FMR inside "
          f"the dev 95% CI: {head['eval_fmr_in_dev_ci']}; eval ECE {head['eval_ece']:.4f} "
          f"({'meets' if result['ece_ok'] else 'misses'} the goal <= {ECE_GOAL}). Over {len(runs)} splits: target "
          f"inside {result['target_in_eval_ci_splits']}/{len(runs)}, eval ECE median {result['eval_ece_median']:.4f}, "
          f"within the goal {result['ece_ok_splits']}/{len(runs)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
