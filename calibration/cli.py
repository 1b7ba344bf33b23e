"""`python -m calibration`: choose a threshold and fit a confidence on held-out comparisons.

    python -m calibration --bundle DIR --data orl|fashion-mnist|PATH [--policy eer|fmr=..|fnmr=..|cost=..]
    python -m calibration --scores FILE [--policy ...] [--json]

Bundle mode embeds identities the model never trained on (see `calibration.protocol`),
splits them into dev (chooses the threshold, fits the confidence) and eval (reports how
both hold up), and writes calibration.json into the bundle plus a report folder.
Score mode does the same on a CSV of distances (`label`, `distance`, optional `id_a`, `id_b`).

Summary layout (printed by --json, saved as report.json; calibration.json holds the same
keys plus operating_points, minus source/written/report_dir):
    policy, threshold, metric, confidence     the pair calibration the service uses
    metrics: {dev, eval}                      per split: identities, genuine, impostor, forgery,
                                              threshold, fmr, fnmr (errors/total/value/text/ci),
                                              eer {value, threshold, method, ci}, auc, fnmr_at_fmr
                                              {"0.01", "0.001"}, confidence {prior_used, ece, cllr,
                                              reliability}, bootstrap (how intervals were made)
    fusion (optional)                         the same for subject verification: rule,
                                              templates_per_subject, policy, threshold, ...
    sizes, identities {dev, eval}, protocol, data, notes

Every refusal is one line on stderr and exit status 2, never a traceback.
"""

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from calibration import fit  # noqa: E402
from calibration.confidence import CALIBRATORS  # noqa: E402
from calibration.pairs import Comparisons, pair_comparisons, template_comparisons  # noqa: E402
from calibration.policies import PolicyError, parse_policy  # noqa: E402
from calibration.protocol import (MIN_IDENTITIES, CalibrationError, held_out_identities,  # noqa: E402
                                  images_per_identity_cap, sample_rows, split_dev_eval)
from calibration.report import dumps, json_safe, text_summary, write_report  # noqa: E402
from verifier.core.errors import VerifierError  # noqa: E402
from verifier.core.fusion import DEFAULT_RULE, RULES  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(prog="python -m calibration", description=__doc__.split("\n")[0])
    source = p.add_argument_group("what to calibrate (either --bundle and --data, or --scores)")
    source.add_argument("--bundle", help="model bundle directory (calibration.json is written into it)")
    source.add_argument("--data", help="orl, fashion-mnist, or a folder ROOT/<identity>/<images> "
                        "(signatures: ROOT/<writer>/genuine|forged/)")
    source.add_argument("--scores", help="CSV with a header: label (1 genuine, 0 impostor), distance, "
                        "optional id_a, id_b (identities, for the dev/eval split and the bootstrap)")
    how = p.add_argument_group("threshold and confidence")
    how.add_argument("--policy", default="eer", help="eer (default), fmr=<target>, fnmr=<target> or cost=<c_fm>:<c_fnm>:<p_genuine>")
    how.add_argument("--confidence", choices=sorted(CALIBRATORS), default="logistic",
                     help="map from distance to P(same), fitted on dev comparisons (default: logistic)")
    how.add_argument("--prior", type=float, default=0.5,
                     help="share of genuine comparisons the stated P(same) assumes (default: 0.5)")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--eval-fraction", type=float, default=None,
                       help="share of identities for eval (0: dev only). Default 0.5; with --scores, 0.5 when "
                            "the file names at least 4 identities, else 0")
    proto.add_argument("--seed", type=int, default=0, help="seeds the dev/eval split, sampling and bootstrap (default: 0)")
    proto.add_argument("--max-impostors", type=int, default=None,
                       help="score a seeded sample of at most N impostor pairs per split (default: all)")
    proto.add_argument("--max-images-per-identity", type=int, default=None,
                       help="seeded sample of images per identity (default: all, unless that makes over "
                            "50,000 comparisons)")
    proto.add_argument("--bootstrap", type=int, default=1000, help="identity resamples for 95%% intervals (default: 1000; 0: none)")
    proto.add_argument("--templates-per-subject", type=int, default=3,
                       help="k images enrolled per subject for the template (fusion) protocol (default: 3)")
    proto.add_argument("--fusion", choices=RULES, default=DEFAULT_RULE, help="how a probe's distances to "
                       "a subject's templates are fused (default: mean)")
    out = p.add_argument_group("output")
    out.add_argument("--report", default=None, help="report folder (default with --bundle: reports/<bundle name>)")
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (and nothing else)")
    out.add_argument("--dry-run", action="store_true", help="do not write calibration.json")
    return p


def _check_args(args):
    if args.scores and (args.bundle or args.data):
        raise CalibrationError("--scores calibrates a score file on its own: leave out --bundle and --data")
    if not args.scores and not (args.bundle and args.data):
        raise CalibrationError("give --bundle DIR and --data orl|fashion-mnist|PATH, or --scores FILE")
    if args.eval_fraction is not None and not 0 <= args.eval_fraction < 1:
        raise CalibrationError(f"--eval-fraction must lie in [0, 1), got {args.eval_fraction}")
    if args.bootstrap < 0:
        raise CalibrationError("--bootstrap must be 0 or more")
    if args.max_impostors is not None and args.max_impostors < 1:
        raise CalibrationError("--max-impostors must be at least 1")
    if args.templates_per_subject < 1:
        raise CalibrationError("--templates-per-subject must be at least 1")
    if not 0 < args.prior < 1:
        raise CalibrationError(f"--prior must lie strictly between 0 and 1, got {args.prior}")


def _log(message):
    """Progress goes to stderr so that stdout holds only the summary (or its JSON)."""
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- score files

def read_scores(path):
    """A score CSV -> Comparisons (id_a/id_b None when the file has no identity columns)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise CalibrationError(f"score file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CalibrationError(f"cannot read score file {path}: {exc}") from None
    if not rows:
        raise CalibrationError(f"{path} is empty: expected a header line with label,distance[,id_a,id_b]")
    header = [name.strip().lower() for name in rows[0]]
    missing = [name for name in ("label", "distance") if name not in header]
    if missing:
        raise CalibrationError(f"{path}: the header {','.join(rows[0])!r} lacks {' and '.join(missing)} "
                               "(expected label,distance[,id_a,id_b]; label 1 genuine, 0 impostor)")
    if ("id_a" in header) != ("id_b" in header):
        raise CalibrationError(f"{path}: give both id_a and id_b, or neither")
    col = {name: header.index(name) for name in ("label", "distance", "id_a", "id_b") if name in header}
    labels, distances, id_a, id_b = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CalibrationError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        label, distance = row[col["label"]].strip(), row[col["distance"]].strip()
        if label not in ("0", "1"):
            raise CalibrationError(f"{path} line {line}: label must be 1 (genuine) or 0 (impostor), got {label!r}")
        try:
            value = float(distance)
        except ValueError:
            raise CalibrationError(f"{path} line {line}: distance {distance!r} is not a number") from None
        if not np.isfinite(value):
            raise CalibrationError(f"{path} line {line}: distance {distance!r} is not finite")
        labels.append(int(label))
        distances.append(value)
        if "id_a" in col:
            a, b = row[col["id_a"]].strip(), row[col["id_b"]].strip()
            if not a or not b:
                raise CalibrationError(f"{path} line {line}: empty id_a or id_b")
            if label == "1" and a != b:
                raise CalibrationError(f"{path} line {line}: a genuine comparison (label 1) needs id_a == id_b; "
                                       f"got {a!r} and {b!r} (id_a and id_b name identities, not images)")
            id_a.append(a)
            id_b.append(b)
    if not labels:
        raise CalibrationError(f"{path} has a header but no comparisons")
    label = np.array(labels, dtype=np.int8)
    ids = (np.array(id_a), np.array(id_b)) if "id_a" in col else (None, None)
    comparisons = Comparisons(np.array(distances), label, *ids, forgery=np.zeros(len(label), bool),
                              sampled_from=int((label == 0).sum()))
    fit.require_both(comparisons, str(path))
    return comparisons


def _scores_splits(args, comparisons):
    """(dev, eval or None, identities dict, notes) for a score file."""
    if comparisons.id_a is None:
        if args.eval_fraction:
            raise CalibrationError("--eval-fraction needs identities to split: add id_a and id_b columns")
        return comparisons, None, None, ["no id_a/id_b columns: calibrated and reported on all scores "
                                         "(dev only, no eval split, no bootstrap intervals)"]
    names = sorted(set(comparisons.id_a.tolist()) | set(comparisons.id_b.tolist()))
    fraction = args.eval_fraction
    if fraction is None:
        fraction = 0.5 if len(names) >= 2 * MIN_IDENTITIES else 0.0
    dev_names, eval_names = split_dev_eval(names, fraction, args.seed)
    if not eval_names:
        return comparisons, None, {"dev": dev_names, "eval": []}, [
            f"{len(names)} identities, no eval split: the threshold and confidence are reported on the scores "
            "that chose them (optimistic)"]
    evaluation = comparisons.restrict(eval_names)
    return comparisons.restrict(dev_names), evaluation, {"dev": dev_names, "eval": eval_names}, []


def run_scores(args, policy):
    comparisons = read_scores(args.scores)
    dev, evaluation, identities, notes = _scores_splits(args, comparisons)
    section = fit.calibrate(dev, evaluation, policy, confidence=args.confidence, prior=args.prior,
                            n_bootstrap=args.bootstrap, seed=args.seed)
    split = "dev only" if evaluation is None else f"{len(identities['dev'])} dev and {len(identities['eval'])} " \
                                                  f"eval identities (seed {args.seed}), cross-split comparisons dropped"
    summary = {
        "source": str(args.scores),
        "protocol": f"score file {args.scores}: {len(comparisons)} comparisons; {split}. "
                    f"{_choice_text(policy, args, evaluation is not None)}",
        **{key: section[key] for key in ("policy", "threshold", "confidence", "metrics")},
        "sizes": _split_sizes(dev, evaluation),
        "identities": identities,
        "notes": notes,
    }
    splits = [("dev", dev, section["threshold"], "-"), ("eval", evaluation, section["threshold"], "--")]
    return summary, splits


# ---------------------------------------------------------------- bundles

def _split_sizes(dev, evaluation, images=None):
    sizes = {}
    for key, fn in (("genuine", lambda c: int((c.label == 1).sum())), ("impostor", lambda c: int((c.label == 0).sum())),
                    ("forgery", lambda c: int(c.forgery.sum()))):
        sizes[key] = {"dev": fn(dev), "eval": None if evaluation is None else fn(evaluation)}
    if images is not None:
        sizes["images"] = images
    return sizes


def _choice_text(policy, args, has_eval):
    return (f"The {policy.spec} policy chose the threshold on dev comparisons and a {args.confidence} map of "
            f"P(same) (stated under prior {args.prior:g}) was fitted on them"
            + ("; eval comparisons measure both. " if has_eval else ". ")
            + (f"Intervals: 95% percentile bootstrap over {args.bootstrap} identity resamples (seed {args.seed})."
               if args.bootstrap else "No bootstrap intervals (--bootstrap 0)."))


def _protocol_text(why, dev_names, eval_names, sampling, image_note, metric, policy, args, has_fusion):
    split = (f"split (seed {args.seed}) into {len(dev_names)} dev and {len(eval_names)} eval identities"
             if eval_names else "all used as dev (no eval split)")
    fusion = (f" Subject verification: each identity enrolls {args.templates_per_subject} images (seeded), "
              f"every other image probes every subject of its split, distances fused by {args.fusion}; "
              "calibrated the same way." if has_fusion else "")
    return (f"Open-set: {why}, {split}. Pairs: every genuine pair and {sampling} within each split "
            f"(images: {image_note}), scored with the bundle's {metric} distance. "
            f"{_choice_text(policy, args, bool(eval_names))}{fusion}")


def _embed(bundle_dir, meta, images):
    """(embeddings of the images acquired, which were acquired): a face profile's images with
    no face found are failures to acquire, left out of every comparison and counted."""
    from verifier.core.acquisition import acquire
    from verifier.core.bundle import load_model
    from verifier.core.embedder import Embedder
    from verifier.core.profiles import Profile

    profile = Profile.from_dict(meta["profile"])
    _log(f"embedding {len(images)} images with bundle {meta['bundle_id']}"
         + (f" (detecting and aligning faces: {profile.detector})" if profile.detector else ""))
    acquired = acquire(images, profile)
    if acquired.failed:
        _log(f"no face found in {len(acquired.failed)} of {len(images)} images (failures to acquire)")
    return Embedder(load_model(bundle_dir, meta), profile).embed_batch(acquired.inputs), acquired.acquired


def _failure_to_acquire(acquired, parts):
    """Failures to acquire with their counts: overall, dev and eval (ISO/IEC 19795-1 FTA)."""
    def rate(mask):
        total, failed = int(len(mask)), int((~mask).sum())
        return {"failed": failed, "images": total, "rate": failed / total if total else 0.0}

    return {"all": rate(acquired), "dev": rate(acquired[parts[0]]), "eval": rate(acquired[parts[1]])}


def _pairs(emb, labels, forged, rows, metric, args):
    if len(rows) == 0:
        return None
    return pair_comparisons(emb[rows], labels[rows], forged[rows], metric,
                            max_impostors=args.max_impostors, seed=args.seed)


def _fusion(emb, labels, forged, parts, metric, policy, args, counts):
    """(section, [dev, eval] template comparisons, None), or (None, None, note) saying why there is none:
    too few images to enroll k and probe, or a policy the fused comparisons cannot support."""
    k = args.templates_per_subject
    short = [name for name, n in counts.items() if n <= k]
    if short:
        return None, None, (f"no fusion calibration: {len(short)} identities have {k} or fewer images "
                      f"({', '.join(short[:5])}); the template protocol enrolls {k} and probes with the rest")
    scored = [None if len(rows) == 0 else
              template_comparisons(emb[rows], labels[rows], forged[rows], metric, k=k, rule=args.fusion,
                                   seed=args.seed) for rows in parts]
    try:
        section = fit.calibrate(scored[0], scored[1], policy, confidence=args.confidence, prior=args.prior,
                                n_bootstrap=args.bootstrap, seed=args.seed, where="fusion ")
    except CalibrationError as exc:
        return None, None, f"no fusion calibration: {exc.message}"
    return dict(rule=args.fusion, templates_per_subject=k, **section), scored, None


def _preflight(labels, forged, parts, policy, args):
    """Refuse what the pair counts cannot support before TensorFlow loads and anything is embedded.

    Counts do not depend on the embeddings, so the pairs are formed on zero vectors here.
    """
    zeros = np.zeros((len(labels), 1))
    for where, rows in zip(("dev", "eval"), parts):
        if len(rows):
            counted = _pairs(zeros, labels, forged, rows, "euclidean", args)
            fit.require_both(counted, where)
            if where == "dev":
                fit.check_support(policy, len(counted.genuine), len(counted.impostor), where)


def run_bundle(args, policy):
    from imagesets import load_dataset
    from verifier.core.bundle import read_meta

    meta = read_meta(args.bundle)
    data = load_dataset(args.data)
    if data.skipped:
        _log(f"warning: skipped {len(data.skipped)} unreadable files (first: {data.skipped[0][0]})")
    names, why = held_out_identities(meta.get("recipe") or {}, data)
    fraction = 0.5 if args.eval_fraction is None else args.eval_fraction
    dev_names, eval_names = split_dev_eval(names, fraction, args.seed)
    held = data.subset(names)
    counts = held.counts()
    cap, image_note = images_per_identity_cap(list(counts.values()), args.max_images_per_identity)
    rows = sample_rows(held.labels, held.forged, cap, args.seed)
    labels, forged = held.labels[rows], held.forged[rows]
    names_of = np.array(held.identities)
    parts = [np.flatnonzero(np.isin(names_of[labels], part)) for part in (dev_names, eval_names)]
    _preflight(labels, forged, parts, policy, args)
    emb, acquired = _embed(args.bundle, meta, [held.images[i] for i in rows])
    failure_to_acquire = _failure_to_acquire(acquired, parts)
    rows, labels, forged = rows[acquired], labels[acquired], forged[acquired]
    parts = [np.flatnonzero(np.isin(names_of[labels], part)) for part in (dev_names, eval_names)]
    _preflight(labels, forged, parts, policy, args)
    metric = meta["metric"]
    _log(f"scoring pairs of {len(dev_names)} dev and {len(eval_names)} eval identities ({metric} distance)")
    dev, evaluation = (_pairs(emb, labels, forged, part, metric, args) for part in parts)
    section = fit.calibrate(dev, evaluation, policy, confidence=args.confidence, prior=args.prior,
                            n_bootstrap=args.bootstrap, seed=args.seed)
    # images each identity brings to fusion: after the per-identity cap and the failures to acquire
    kept = {name: int(((labels == k) & ~forged).sum()) for k, name in enumerate(held.identities)}
    fusion, fused, why_not = _fusion(emb, labels, forged, parts, metric, policy, args, kept)
    notes = [why_not] if why_not else []
    if not eval_names:
        notes.append("--eval-fraction 0: the threshold and confidence are reported on the dev comparisons that "
                      "chose them (optimistic); no eval split")

    sampling = ("all impostor pairs" if args.max_impostors is None else
                f"a seeded sample (seed {args.seed}) of at most {args.max_impostors} impostor pairs per split "
                f"(of {dev.sampled_from} dev" + (f" and {evaluation.sampled_from} eval" if evaluation else "")
                + " available)")
    sizes = _split_sizes(dev, evaluation, images={"dev": int(len(parts[0])),
                                                  "eval": int(len(parts[1])) if eval_names else None})
    sizes.update(identities={"dev": len(dev_names), "eval": len(eval_names)}, impostor_sampling=sampling,
                 images_per_identity=image_note)
    calibration = {
        "policy": section["policy"], "threshold": section["threshold"], "metric": metric,
        "confidence": section["confidence"], "operating_points": section["operating_points"],
        "metrics": section["metrics"], "sizes": sizes, "failure_to_acquire": failure_to_acquire,
        "identities": {"dev": dev_names, "eval": eval_names},
        "protocol": _protocol_text(why, dev_names, eval_names, sampling, image_note, metric, policy, args,
                                   fusion is not None),
        "data": {"name": data.name, "fingerprint": data.fingerprint, "spec": args.data},
        "notes": notes,
    }
    if fusion:
        calibration["fusion"] = fusion
    summary = {"source": f"bundle {args.bundle} ({meta['bundle_id']}) on {data.name}",
               "bundle": {"path": str(args.bundle), "bundle_id": meta["bundle_id"]},
               **{key: value for key, value in calibration.items() if key != "operating_points"}}
    if fusion:
        summary["fusion"] = {key: value for key, value in fusion.items() if key != "operating_points"}
    if not args.dry_run:
        from verifier.core.bundle import CALIBRATION_FILE, write_calibration

        summary["calibration_id"] = write_calibration(args.bundle, json_safe(calibration))
        summary["written"] = str(Path(args.bundle) / CALIBRATION_FILE)
    splits = [("pairs dev", dev, section["threshold"], "-"), ("pairs eval", evaluation, section["threshold"], "--")]
    if fusion:
        splits += [(f"fusion ({args.fusion}) dev", fused[0], fusion["threshold"], ":"),
                   (f"fusion ({args.fusion}) eval", fused[1], fusion["threshold"], "-.")]
    return summary, splits


def run(args):
    _check_args(args)
    policy = parse_policy(args.policy)
    summary, splits = run_scores(args, policy) if args.scores else run_bundle(args, policy)
    report = args.report or (f"reports/{Path(args.bundle).resolve().name}" if args.bundle else None)
    if report:
        summary["report_dir"] = str(report)
        write_report(report, summary, splits)
    print(dumps(summary) if args.json else text_summary(summary))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (VerifierError, PolicyError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
