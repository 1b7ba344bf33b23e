"""Open-set verification accuracy: Siamese towers against classical baselines.

    python bench/accuracy.py --data orl --folds 4

Fold f holds out identities f*10+1 .. f*10+10 (in the data set's identity order); every
model is fitted on the other identities only (the Siamese models keep a few of those
aside to choose the number of epochs, then train again on all of them, as
`python -m training` does; `--no-refit` scores the early-stopped model). On the held-out
images it scores all genuine pairs (ORL: 10 x 45 = 450) and all impostor pairs (4,500)
and prints the exact EER (linear interpolation where FMR and FNMR cross, with counts at
the nearest real threshold), the AUC and the fitting time, per fold and as a mean; the
last line is JSON.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.baselines import BASELINES  # noqa: E402
from calibration.metrics import auc, eer  # noqa: E402
from calibration.pairs import pair_comparisons  # noqa: E402
from training.splits import default_validation, split_identities  # noqa: E402
from training.trainer import TrainConfig, refit, train  # noqa: E402
from verifier.datasets import load_dataset  # noqa: E402
from verifier.embedder import Embedder  # noqa: E402
from verifier.profiles import get_profile, preprocess_batch  # noqa: E402

SIAMESE = {"siamese-contrastive": "contrastive", "siamese-triplet": "triplet", "siamese-cosface": "cosface"}
MODELS = tuple(SIAMESE) + tuple(BASELINES)


def parse_overrides(items):
    """--set key=value pairs -> TrainConfig keyword arguments of the right types."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.replace("-", "_")
        if key not in types:
            raise SystemExit(f"--set: unknown setting {key!r}; known: {', '.join(types)}")
        kind = types[key]
        if value.lower() in ("none", "null") and "None" in str(kind):
            out[key] = None
        elif "bool" in str(kind):
            out[key] = value.lower() in ("1", "true", "yes")
        elif "int" in str(kind):
            out[key] = int(value)
        elif "float" in str(kind):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def run_siamese(loss, overrides, data, split, profile, verbose, refit_after=True):
    """Train one loss with its own default recipe (training.trainer), plus any --set overrides,
    then (as `python -m training` does) refit on the training and validation identities together."""
    train_set, val_set = data.subset(split.train), data.subset(split.validation)
    config = TrainConfig(**{"loss": loss, **overrides})
    result = train(config, preprocess_batch(train_set.images, profile), train_set.labels, profile,
                   val_images=preprocess_batch(val_set.images, profile), val_labels=val_set.labels,
                   verbose=verbose)
    final, seconds = result, result.training_seconds
    if refit_after and result.best_validation_eer is not None:
        both = data.subset(split.train + split.validation)
        final = refit(config, result, preprocess_batch(both.images, profile), both.labels, profile, verbose=verbose)
        seconds += final.training_seconds
    return Embedder(final.model, profile).embed_batch, seconds, {
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "best_validation_eer": result.best_validation_eer, "refit": final is not result}


def evaluate(embeddings, labels, metric):
    """EER, the operating point at its threshold (with counts) and AUC over all held-out pairs."""
    pairs = pair_comparisons(embeddings, labels, np.zeros(len(labels), bool), metric)
    result = eer(pairs.genuine, pairs.impostor)
    point = next(p for p in result.bracket if p.threshold == result.threshold)
    return result, point, auc(pairs.genuine, pairs.impostor)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="orl")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--per-fold", type=int, default=10, help="identities held out per fold")
    p.add_argument("--only-folds", default=None, help="comma list of fold numbers (1-based) to run")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of: {', '.join(MODELS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting for the Siamese models (e.g. epochs=10)")
    p.add_argument("--validation-identities", type=int, default=None,
                   help="identities of each fold's training side kept for early stopping "
                        "(default: as python -m training; 0 trains on all of them for the full schedule)")
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="evaluate the early-stopped model instead of the refit on training + validation identities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="show training progress bars")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown models: {', '.join(unknown)}")
    overrides = {"seed": args.seed, **parse_overrides(args.set)}
    data = load_dataset(args.data, strict=True)
    profile = get_profile(data.profile)
    folds = range(1, args.folds + 1) if args.only_folds is None else [int(f) for f in args.only_folds.split(",")]
    if args.folds * args.per_fold > len(data.identities) or args.per_fold + 4 > len(data.identities):
        raise SystemExit(f"{len(data.identities)} identities cannot make {args.folds} folds of {args.per_fold}")
    print(f"{data.name}: {len(data.identities)} identities, {len(data)} images; "
          f"{args.folds} folds of {args.per_fold} held-out identities; settings {overrides}")
    results = {m: {} for m in models}
    for fold in folds:
        held = data.identities[(fold - 1) * args.per_fold:fold * args.per_fold]
        n_rest = len(data.identities) - len(held)
        n_val = default_validation(n_rest) if args.validation_identities is None else args.validation_identities
        split = split_identities(data.identities, held, n_val, args.seed)
        test = data.subset(held)
        test_x = preprocess_batch(test.images, profile)
        fit = data.subset(split.train + split.validation)  # baselines: every non-held-out identity
        fit_x = preprocess_batch(fit.images, profile)
        for model in models:
            extra = {}
            if model in SIAMESE:
                embed, seconds, extra = run_siamese(SIAMESE[model], overrides, data, split, profile, args.verbose,
                                                     args.refit)
                embeddings, metric = embed(test_x), "euclidean"
            else:
                start = time.perf_counter()
                embeddings, metric = BASELINES[model](fit_x, fit.labels, test_x), "cosine"
                seconds = time.perf_counter() - start
            result, point, area = evaluate(embeddings, test.labels, metric)
            results[model][fold] = {"eer": result.value, "auc": area, "seconds": round(seconds, 1),
                                    "false_matches": point.fmr.errors, "impostor": point.fmr.total,
                                    "false_non_matches": point.fnmr.errors, "genuine": point.fnmr.total,
                                    **extra}
            counts = f"(FMR {point.fmr.errors}/{point.fmr.total}, FNMR {point.fnmr.errors}/{point.fnmr.total})"
            print(f"fold {fold} ({held[0]}..{held[-1]})  {model:20s} EER {100 * result.value:.2f}% {counts:30s} "
                  f"AUC {area:.4f}  fit {seconds:6.1f} s", flush=True)
    print("\nmean over folds " + ",".join(str(f) for f in folds))
    summary = {}
    for model in models:
        per_fold = results[model]
        mean_eer = float(np.mean([r["eer"] for r in per_fold.values()]))
        mean_auc = float(np.mean([r["auc"] for r in per_fold.values()]))
        seconds = float(np.mean([r["seconds"] for r in per_fold.values()]))
        summary[model] = {"mean_eer": mean_eer, "mean_auc": mean_auc, "mean_fit_seconds": round(seconds, 1),
                          "folds": {str(k): v for k, v in per_fold.items()}}
        folds_text = " / ".join(f"{100 * r['eer']:.2f}" for r in per_fold.values())
        print(f"  {model:20s} EER {100 * mean_eer:5.2f}%  ({folds_text})  AUC {mean_auc:.4f}  "
              f"fit {seconds:.1f} s per fold")
    print(json.dumps({"data": data.name, "fingerprint": data.fingerprint, "folds": list(folds),
                      "per_fold": args.per_fold, "validation_identities": args.validation_identities,
                      "settings": overrides, "models": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
