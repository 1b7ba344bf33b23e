"""Does enrolling several images per subject beat single-image pair verification, on real faces?

    python bench/enroll.py [--bundle bundles/face] [--enroll 3] [--seed 0]

On the ORL identities the bundle never trained on (bundle.json's recipe
`holdout_identities`): each identity enrolls 3 seeded images through the real enrollment
path (quality check, embedding, a fresh SQLite store) and its other 7 images are probes,
genuine against their own subject and impostor against every other subject. Subject
verification fuses a probe's distances with the calibrated rule (calibration.json's
"fusion" section); single-image pair verification compares the same probes with each
enrolled image on its own, at the pair calibration's threshold. For both: EER (linear
interpolation on the step curves, `calibration.metrics.eer`) and FMR / FNMR at the
calibrated threshold with counts, over all held-out identities and over the calibration's
eval identities alone (the dev half chose the thresholds, so only eval is out of sample).
Open-set 1:N: detection-and-identification rate (rank 1 and within threshold) and false
positive identification rate (a probe whose own subject is left out of the gallery is
accepted as someone) at the fusion threshold. The last line is one JSON object.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from calibration.metrics import eer, fmr_fnmr
from imagesets import load_orl
from verifier.core.distances import cross_distances
from verifier.core.errors import VerifierError
from verifier.core.fusion import fused_distances
from verifier.core.scorer import Scorer
from verifier.enrollment.service import EnrollmentService
from verifier.enrollment.store import open_store
from verifier.settings import DEFAULT_BUNDLE


def figures(genuine, impostor, threshold):
    """EER and the calibrated threshold's FMR / FNMR, with counts."""
    point = fmr_fnmr(genuine, impostor, threshold)
    return {"eer": eer(genuine, impostor).value, "threshold": threshold,
            "fmr": point.fmr.to_dict() | {"text": str(point.fmr)},
            "fnmr": point.fnmr.to_dict() | {"text": str(point.fnmr)},
            "genuine": len(genuine), "impostor": len(impostor)}


def split(scores, probe_ids, subject_ids, keep):
    """(genuine, impostor) of a probe x subject score matrix, for identities in `keep` only."""
    p = np.isin(probe_ids, keep)
    s = np.isin(subject_ids, keep)
    block = scores[np.ix_(p, s)]
    same = np.asarray(probe_ids)[p][:, None] == np.asarray(subject_ids)[s][None, :]
    return block[same], block[~same]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--enroll", type=int, default=3, help="images enrolled per identity")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def open_scorer(bundle):
    """The bundle's scorer, refused unless it trained on ORL, held people out and has a fusion calibration."""
    scorer = Scorer.from_bundle(bundle)
    recipe = scorer.bundle.meta.get("recipe", {})
    if recipe.get("dataset", {}).get("name") != "orl" or len(recipe.get("holdout_identities") or []) < 2:
        raise VerifierError("the bundle must be trained on ORL with at least 2 held-out identities")
    if not scorer.calibration or not scorer.calibration.get("fusion"):
        raise VerifierError("the bundle needs calibration.json with a \"fusion\" section: run "
                            "`python -m calibration --bundle DIR --data orl`")
    return scorer


def enroll_and_probe(scorer, data, holdout, n_enroll, seed):
    """Enroll `n_enroll` seeded images of each identity in a fresh store; the rest are probes.

    Returns ({identity: its templates}, probe embeddings, probe identities).
    """
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as work:
        service = EnrollmentService(open_store(f"sqlite:///{Path(work) / 'bench.db'}"), scorer)
        enrolled, probes, probe_ids = {}, [], []
        for name in holdout:
            rows = [i for i in range(len(data)) if data.identity_of(i) == name]
            order = rng.permutation(rows)
            result = service.enroll(name, [data.images[i] for i in order[:n_enroll]], create=True)
            if result["failure_to_enrol"]:
                print(f"{name}: {result['failure_to_enrol']} failure(s) to enrol", file=sys.stderr)
            enrolled[name] = service.current_templates(name)
            probes += [data.images[i] for i in order[n_enroll:]]
            probe_ids += [name] * (len(order) - n_enroll)
        return enrolled, scorer.embed(probes), probe_ids


def open_set(subject_scores, probe_ids, subjects, threshold):
    """Rank-1 detection within the threshold (DIR) and false positive identification (FPIR, own subject left out)."""
    own = np.asarray(probe_ids)[:, None] == np.asarray(subjects)[None, :]
    best = subject_scores.argmin(axis=1)
    detected = (np.asarray(subjects)[best] == np.asarray(probe_ids)) & (subject_scores.min(axis=1) <= threshold)
    false_positive = np.where(own, np.inf, subject_scores).min(axis=1) <= threshold
    return {"threshold": threshold, "dir": {"hits": int(detected.sum()), "total": len(probe_ids)},
            "fpir": {"errors": int(false_positive.sum()), "total": len(probe_ids)}}


def measure(scorer, enrolled, probe_emb, probe_ids, holdout, eval_ids, n_enroll):
    """Subject (fused) and single-image pair figures over all held-out and eval identities, and open-set 1:N."""
    fusion, calibration = scorer.calibration["fusion"], scorer.calibration
    subjects = list(holdout)
    subject_scores = np.stack([fused_distances(probe_emb, enrolled[s], scorer.metric, fusion["rule"])
                               for s in subjects], axis=1)
    single = np.concatenate([enrolled[s] for s in subjects])
    single_ids = [s for s in subjects for _ in range(len(enrolled[s]))]
    pair_scores = cross_distances(probe_emb, single, scorer.metric)
    report = {"benchmark": "enroll", "model": scorer.bundle_id, "calibration_id": scorer.calibration_id,
              "identities": len(holdout), "enrolled_per_identity": n_enroll, "probes": len(probe_ids),
              "fusion_rule": fusion["rule"], "fusion_calibrated_k": fusion.get("templates_per_subject")}
    for scope, keep in (("all_heldout", holdout), ("eval_only", eval_ids)):
        report[scope] = {
            "subject": figures(*split(subject_scores, probe_ids, subjects, keep), float(fusion["threshold"])),
            "pair": figures(*split(pair_scores, probe_ids, single_ids, keep), float(calibration["threshold"])),
        }
    report["open_set"] = open_set(subject_scores, probe_ids, subjects, float(fusion["threshold"]))
    return report


def print_report(report, n_enroll):
    print(f"bundle {report['model']} (calibration {report['calibration_id']}); {report['identities']} held-out ORL "
          f"identities, {n_enroll} enrolled + {report['probes'] // report['identities']} probe images each; "
          f"fusion rule {report['fusion_rule']}")
    for scope in ("all_heldout", "eval_only"):
        for kind, label in (("subject", f"subject ({n_enroll} templates)"), ("pair", "single-image pair")):
            f = report[scope][kind]
            print(f"  {scope:11s} {label:22s} EER {100 * f['eer']:5.2f}%   at threshold {f['threshold']:.4f}: "
                  f"FNMR {f['fnmr']['text']}, FMR {f['fmr']['text']}")
    found = report["open_set"]
    print(f"  open-set identify at the fusion threshold: DIR {found['dir']['hits']}/{found['dir']['total']}, "
          f"FPIR {found['fpir']['errors']}/{found['fpir']['total']} (own subject left out)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        scorer = open_scorer(args.bundle)
    except VerifierError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    holdout = scorer.bundle.meta["recipe"]["holdout_identities"]
    eval_ids = scorer.calibration.get("identities", {}).get("eval") or holdout
    enrolled, probe_emb, probe_ids = enroll_and_probe(scorer, load_orl().subset(holdout), holdout, args.enroll,
                                                      args.seed)
    report = measure(scorer, enrolled, probe_emb, probe_ids, holdout, eval_ids, args.enroll)
    print_report(report, args.enroll)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
