"""Does enrolling several images per subject beat single-image pair verification?

    python bench/enroll.py [--bundle bundles/face] [--enroll 3] [--seed 0]
    python bench/enroll.py --bundle bundles/signature --data ../shared/data/signatures-sigcomp2011 --enroll 1,3,5

Faces (no --data, or --data orl). On the ORL identities the bundle never trained on
(bundle.json's recipe `holdout_identities`): each identity enrolls 3 seeded images through the real enrollment
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
accepted as someone) at the fusion threshold.

Signatures (--data a folder ROOT/<writer>/genuine|forged/), enrollment as banks do it. On the
writers the bundle never trained on (`calibration.protocol.held_out_identities`: the recipe's
`holdout_identities` on the bundle's own data, else every writer it never saw), for each N of
--enroll (a comma list) every writer enrolls the same N seeded genuine references through
the real enrollment path, in a fresh SQLite store per N (a reference refused by the quality
check is replaced by the writer's next seeded image and counted as a failure to enrol).
Writers with fewer than N + 1 genuine images, or that cannot enrol N, are left out for that
N and counted. The writer's other genuine signatures are genuine probes; its skilled
forgeries are skilled-impostor probes against it; the other writers' genuine probes are
random-impostor probes. Subject verification fuses a probe's distances to the N references
with the calibrated rule (the mean when calibration.json has no "fusion" section); pair
verification compares the probe with each reference alone. Per impostor kind (skilled,
random) and for both: the EER, and the FNMR at FMR = 1% with the threshold chosen on that
run's own impostor scores of that kind (said so in the output; with the rule-of-three check
of whether there are enough impostors), plus FNMR / FMR at the bundle's calibrated fusion
threshold and at its pair threshold, all with counts.

The last line is one JSON object.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from calibration.metrics import eer, fmr_fnmr, supports_rate, threshold_at_fmr
from calibration.protocol import held_out_identities
from imagesets import load_dataset, load_orl
from verifier.core.distances import cross_distances
from verifier.core.errors import VerifierError
from verifier.core.fusion import DEFAULT_RULE, fused_distances
from verifier.core.scorer import BACKENDS, Scorer
from verifier.enrollment.service import EnrollmentService, FailureToEnrol
from verifier.enrollment.store import open_store
from verifier.settings import DEFAULT_BUNDLE

TARGET_FMR = 0.01
KINDS = ("skilled", "random")
CHOSEN_ON = {"skilled": "this run's skilled-impostor scores", "random": "this run's random-impostor scores"}


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


def enroll_list(text):
    """--enroll: a comma list of positive image counts, e.g. 1,3,5."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--enroll takes a comma list of whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--enroll takes numbers >= 1, got {text!r}")
    return list(dict.fromkeys(values))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE)
    parser.add_argument("--data", default=None,
                        help="orl (the default: the face benchmark) or a signature folder ROOT/<writer>/genuine|forged/")
    parser.add_argument("--enroll", type=enroll_list, default=[3],
                        help="images enrolled per identity; a comma list runs each (e.g. 1,3,5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="the scorer's embedding backend")
    return parser


def open_scorer(bundle, backend="auto"):
    """The bundle's scorer, refused unless it trained on ORL, held people out and has a fusion calibration."""
    scorer = Scorer.from_bundle(bundle, backend=backend)
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


def main_faces(args):
    """The ORL face benchmark (one report per --enroll value; the JSON as before for a single value)."""
    scorer = open_scorer(args.bundle, args.backend)
    holdout = scorer.bundle.meta["recipe"]["holdout_identities"]
    eval_ids = scorer.calibration.get("identities", {}).get("eval") or holdout
    data = load_orl().subset(holdout)
    reports = {}
    for n_enroll in args.enroll:
        enrolled, probe_emb, probe_ids = enroll_and_probe(scorer, data, holdout, n_enroll, args.seed)
        reports[n_enroll] = measure(scorer, enrolled, probe_emb, probe_ids, holdout, eval_ids, n_enroll)
        print_report(reports[n_enroll], n_enroll)
    if len(reports) == 1:
        print(json.dumps(next(iter(reports.values()))))
    else:
        print(json.dumps({"benchmark": "enroll", "by_enroll": {str(n): r for n, r in reports.items()}}))
    return 0


# -- signatures: enrollment as banks do it ---------------------------------------------------


def _rate(rate):
    return rate.to_dict() | {"text": str(rate)}


def _point(genuine, impostor, threshold):
    point = fmr_fnmr(genuine, impostor, threshold)
    return {"threshold": float(threshold), "fnmr": _rate(point.fnmr), "fmr": _rate(point.fmr)}


def kind_figures(genuine, impostor, kind, calibrated, target_fmr=TARGET_FMR):
    """One impostor kind: EER, FNMR at FMR = target on this run's scores, and at each calibrated threshold."""
    support = supports_rate(len(impostor), target_fmr)
    threshold = threshold_at_fmr(genuine, impostor, target_fmr)
    at_fmr = _point(genuine, impostor, threshold)
    at_fmr.update({"target_fmr": target_fmr, "threshold_chosen_on": CHOSEN_ON[kind],
                   "supported": support.supported, "impostors_needed": support.needed})
    return {"impostor": len(impostor), "eer": eer(genuine, impostor).value, "fnmr_at_fmr": at_fmr,
            "calibrated": {name: _point(genuine, impostor, t) for name, t in calibrated.items() if t is not None}}


def verification_figures(genuine, impostors, calibrated):
    """{"genuine": count, kind: kind_figures} for each kind of impostor that has comparisons."""
    out = {"genuine": len(genuine)}
    for kind in KINDS:
        scores = impostors[kind]
        out[kind] = kind_figures(genuine, scores, kind, calibrated) if len(scores) and len(genuine) else None
    return out


def enroll_writers(scorer, data, n_enroll, seed):
    """Each writer enrolls `n_enroll` seeded genuine references in a fresh SQLite store.

    A reference the quality check refuses is replaced by the writer's next seeded genuine image
    (and counted); a writer that cannot enrol `n_enroll` and keep one probe is left out.
    Returns {"templates": {writer: (n, D)}, "probes": {writer: genuine probe rows},
    "too_few_genuine": [...], "could_not_enrol": [...], "failures_to_enrol": count}.
    """
    rng = np.random.default_rng(seed)
    out = {"templates": {}, "probes": {}, "too_few_genuine": [], "could_not_enrol": [], "failures_to_enrol": 0}
    with tempfile.TemporaryDirectory() as work:
        store = open_store(f"sqlite:///{Path(work) / 'bench.db'}")
        service = EnrollmentService(store, scorer)
        try:
            for label, name in enumerate(data.identities):
                order = rng.permutation(np.flatnonzero((data.labels == label) & ~data.forged))
                if len(order) < n_enroll + 1:
                    out["too_few_genuine"].append(name)
                    continue
                done, pos, refused = 0, 0, set()
                while done < n_enroll and len(order) - pos >= (n_enroll - done) + 1:
                    batch = order[pos:pos + n_enroll - done]
                    pos += len(batch)
                    try:
                        result = service.enroll(name, [data.images[i] for i in batch], create=True)
                    except FailureToEnrol as exc:
                        failed = [f["index"] for f in exc.failures]
                    else:
                        failed = [f["index"] for f in result["failures"]]
                        done += result["enrolled"]
                    refused.update(int(batch[i]) for i in failed)
                out["failures_to_enrol"] += len(refused)
                if done < n_enroll:
                    out["could_not_enrol"].append(name)
                    continue
                templates = service.current_templates(name)
                assert len(templates) == n_enroll, (name, len(templates))
                out["templates"][name] = templates
                out["probes"][name] = order[pos:]
        finally:
            store.close()
    return out


def signature_run(run, embeddings, data, metric, rule, calibrated):
    """Score one N's probes: subject (fused) and pair figures per impostor kind, with the probe counts."""
    writers = list(run["templates"])
    left_out = {"too_few_genuine": run["too_few_genuine"], "could_not_enrol": run["could_not_enrol"],
                "count": len(run["too_few_genuine"]) + len(run["could_not_enrol"])}
    if not writers:
        return {"writers": 0, "left_out": left_out, "failures_to_enrol": run["failures_to_enrol"],
                "probes": {"genuine": 0, "skilled": 0, "random": 0}, "subject": None, "pair": None}
    index = {name: i for i, name in enumerate(data.identities)}
    probe_rows = np.concatenate([run["probes"][w] for w in writers]).astype(np.int64)
    probe_ids = np.array([w for w in writers for _ in run["probes"][w]])
    forgeries = {w: np.flatnonzero((data.labels == index[w]) & data.forged) for w in writers}
    probes = embeddings[probe_rows]
    subject = {"genuine": [], "skilled": [], "random": []}
    pair = {"genuine": [], "skilled": [], "random": []}
    for w in writers:
        refs = run["templates"][w]
        own = probe_ids == w
        fused = fused_distances(probes, refs, metric, rule)
        single = cross_distances(probes, refs, metric)
        subject["genuine"].append(fused[own])
        subject["random"].append(fused[~own])
        pair["genuine"].append(single[own].ravel())
        pair["random"].append(single[~own].ravel())
        fakes = embeddings[forgeries[w]]
        subject["skilled"].append(fused_distances(fakes, refs, metric, rule) if len(fakes) else np.zeros(0))
        pair["skilled"].append(cross_distances(fakes, refs, metric).ravel() if len(fakes) else np.zeros(0))
    subject = {k: np.concatenate(v) for k, v in subject.items()}
    pair = {k: np.concatenate(v) for k, v in pair.items()}
    return {
        "writers": len(writers),
        "left_out": left_out,
        "failures_to_enrol": run["failures_to_enrol"],
        "probes": {"genuine": len(probe_rows), "skilled": int(sum(len(f) for f in forgeries.values())),
                   "random": int(len(probe_rows) * max(len(writers) - 1, 0))},
        "subject": verification_figures(subject["genuine"], subject, calibrated),
        "pair": verification_figures(pair["genuine"], pair, {"pair": calibrated.get("pair")}),
    }


def _line(name, f):
    if f is None:
        return f"      {name:8s} no comparisons"
    at = f["fnmr_at_fmr"]
    enough = "" if at["supported"] else (f"; too few impostors for FMR {100 * at['target_fmr']:g}% by the rule of "
                                          f"three: {f['impostor']} < {at['impostors_needed']}")
    text = (f"      {name:8s} EER {100 * f['eer']:5.2f}%   FNMR {at['fnmr']['text']} at FMR "
            f"{at['fmr']['text']} (threshold {at['threshold']:.4f} set on {at['threshold_chosen_on']}{enough})")
    for which, point in f["calibrated"].items():
        text += (f"\n               at the calibrated {which} threshold {point['threshold']:.4f}: "
                 f"FNMR {point['fnmr']['text']}, FMR {point['fmr']['text']}")
    return text


def print_signature_report(report):
    print(f"bundle {report['model']} (calibration {report['calibration_id']}); {report['data']}: "
          f"{report['holdout']}; fusion rule {report['fusion_rule']} ({report['fusion_rule_from']}); "
          f"FNMR at FMR = {100 * report['target_fmr']:g}% uses a threshold set on this run's own impostor "
          f"scores of each kind")
    for n, r in report["by_enroll"].items():
        left = r["left_out"]
        print(f"  N = {n} references: {r['writers']} writers ({len(left['too_few_genuine'])} left out with fewer "
              f"than {int(n) + 1} genuine, {len(left['could_not_enrol'])} could not enrol {n}); "
              f"{r['failures_to_enrol']} failures to enrol; probes: {r['probes']['genuine']} genuine, "
              f"{r['probes']['skilled']} skilled forgeries, {r['probes']['random']} random-impostor comparisons")
        if r["writers"] == 0:
            continue
        for kind, label in (("subject", f"subject ({n} reference{'s' if int(n) > 1 else ''} fused)"), ("pair", "single-reference pair")):
            f = r[kind]
            print(f"    {label} ({f['genuine']} genuine comparisons)")
            for imp in KINDS:
                print(_line(imp, f[imp]))


def main_signatures(args):
    scorer = Scorer.from_bundle(args.bundle, backend=args.backend)
    data = load_dataset(args.data)
    if data.skipped:
        print(f"{data.name}: {len(data.skipped)} unreadable file(s) skipped", file=sys.stderr)
    holdout, why = held_out_identities(scorer.bundle.meta.get("recipe", {}), data)
    data = data.subset(holdout)
    calibration = scorer.calibration or {}
    fusion = calibration.get("fusion") or {}
    rule = fusion.get("rule", DEFAULT_RULE)
    calibrated = {"fusion": float(fusion["threshold"]) if "threshold" in fusion else None,
                  "pair": float(calibration["threshold"]) if "threshold" in calibration else None}
    embeddings = scorer.embed(data.images)  # probes embed as a verify request embeds them
    report = {"benchmark": "enroll", "data": data.name, "fingerprint": data.fingerprint,
              "model": scorer.bundle_id, "calibration_id": scorer.calibration_id, "profile": scorer.profile.name,
              "holdout": why, "writers": len(holdout), "seed": args.seed,
              "fusion_rule": rule, "fusion_rule_from": "calibration" if fusion else "default (no fusion calibration)",
              "calibration_impostors": calibration.get("impostors"),
              "thresholds": calibrated, "target_fmr": TARGET_FMR,
              "fnmr_at_fmr_threshold": "set on this run's own impostor scores of each kind (skilled, random)",
              "by_enroll": {}}
    for n_enroll in args.enroll:
        run = enroll_writers(scorer, data, n_enroll, args.seed)
        report["by_enroll"][str(n_enroll)] = signature_run(run, embeddings, data, scorer.metric, rule, calibrated)
    print_signature_report(report)
    print(json.dumps(report))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.data in (None, "orl"):
            return main_faces(args)
        return main_signatures(args)
    except VerifierError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
