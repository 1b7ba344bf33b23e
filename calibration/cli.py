"""`python -m calibration`: choose a threshold and fit a confidence on held-out comparisons.

    python -m calibration --bundle DIR --data orl|fashion-mnist|PATH [--policy eer|fmr=..|fnmr=..|cost=..]
    python -m calibration --scores FILE [--policy ...] [--json]

Bundle mode embeds identities the model never trained on (see `calibration.protocol`),
splits them into dev (chooses the threshold, fits the confidence) and eval (reports how
both hold up), and writes calibration.json into the bundle plus a report folder.
Score mode does the same on a CSV of distances (`label`, `distance`, optional `id_a`, `id_b`).
The work is `calibration.calibrate`'s; this module parses, writes and prints.

Summary layout (printed by --json, saved as report.json; calibration.json holds the same
keys plus operating_points, minus source/written/report_dir):
    policy, impostors, threshold, metric,     the pair calibration the service uses (impostors: which
    confidence                                kind chose the threshold: all, skilled or random)
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
from calibration.calibrate import calibrate_bundle, calibrate_scores  # noqa: E402
from calibration.confidence import CALIBRATORS, DEFAULT_CONFIDENCE  # noqa: E402
from calibration.pairs import IMPOSTOR_KINDS, Comparisons  # noqa: E402
from calibration.policies import PolicyError, parse_policy  # noqa: E402
from calibration.protocol import CalibrationError  # noqa: E402
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
    how.add_argument("--impostors", choices=IMPOSTOR_KINDS, default="all",
                     help="which impostor comparisons choose the threshold and fit the confidence (signatures: "
                          "skilled = forgeries of the claimed writer, random = other writers' genuine; default all); "
                          "each kind's FMR is reported either way")
    how.add_argument("--confidence", choices=sorted(CALIBRATORS), default=DEFAULT_CONFIDENCE,
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


def summary_of(result, bundle=None):
    """The summary (layout above) of a `Calibrated`: its calibration less the operating points."""
    summary = {"source": result.source}
    if bundle is not None:
        summary["bundle"] = {"path": str(bundle), "bundle_id": result.bundle_id}
    summary.update({key: value for key, value in result.calibration.items() if key != "operating_points"})
    if "fusion" in summary:
        summary["fusion"] = {key: value for key, value in summary["fusion"].items() if key != "operating_points"}
    return summary


def run_scores(args, policy):
    if args.impostors != "all":
        raise CalibrationError("--impostors applies to a bundle on signature data; a score file marks no "
                               "skilled forgeries: use --impostors all")
    result = calibrate_scores(read_scores(args.scores), policy, source=args.scores, eval_fraction=args.eval_fraction,
                              confidence=args.confidence, prior=args.prior, n_bootstrap=args.bootstrap,
                              seed=args.seed)
    return summary_of(result), result.splits


def run_bundle(args, policy):
    from imagesets import load_dataset
    from verifier.core.bundle import CALIBRATION_FILE, write_calibration

    data = load_dataset(args.data)
    if data.skipped:
        _log(f"warning: skipped {len(data.skipped)} unreadable files (first: {data.skipped[0][0]})")
    result = calibrate_bundle(args.bundle, data, policy, spec=args.data, confidence=args.confidence,
                              prior=args.prior, eval_fraction=0.5 if args.eval_fraction is None else args.eval_fraction,
                              seed=args.seed, max_impostors=args.max_impostors,
                              max_images_per_identity=args.max_images_per_identity, n_bootstrap=args.bootstrap,
                              templates_per_subject=args.templates_per_subject, fusion=args.fusion,
                              impostors=args.impostors, log=_log)
    summary = summary_of(result, args.bundle)
    if not args.dry_run:
        summary["calibration_id"] = write_calibration(args.bundle, json_safe(result.calibration))
        summary["written"] = str(Path(args.bundle) / CALIBRATION_FILE)
    return summary, result.splits


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
