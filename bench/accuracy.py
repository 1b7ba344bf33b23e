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

Face data (ORL, a folder of face photos) adds the face pipeline's rows: faces detected and
aligned once (verifier.core.acquisition; images with no face are failures to acquire, counted
and left out of that model's pairs), then dlib's pretrained ResNet as it is
(`face-resnet`), and fine-tuned on the fold's training people with triplet or contrastive
(`face-resnet-triplet`, `face-resnet-contrastive`, settings from --set as for the small
CNN). `dlib` is face_recognition's own pipeline (bench/dlib_face.py), measured in the same
run when `dlib-bin` and `face-recognition-models` are installed (requirements-bench.txt).
The small CNN and the classical baselines keep the `face-small` profile.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import fields

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench import dlib_face
from bench.baselines import BASELINES
from calibration.metrics import auc, eer
from calibration.pairs import pair_comparisons
from imagesets import load_dataset
from training.splits import default_validation, split_identities
from training.towers import PRETRAINED, build_tower
from training.trainer import TrainConfig, refit, train
from verifier.core.acquisition import acquire_dataset, chip_profile
from verifier.core.embedder import Embedder
from verifier.core.profiles import get_profile, preprocess_batch

SIAMESE = {"siamese-contrastive": "contrastive", "siamese-triplet": "triplet", "siamese-cosface": "cosface"}
FACE = {"face-resnet": None, "face-resnet-triplet": "triplet", "face-resnet-contrastive": "contrastive"}
MODELS = tuple(FACE) + ("dlib",) + tuple(SIAMESE) + tuple(BASELINES)


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


def run_face_resnet(loss, overrides, faces, split, profile, verbose, refit_after=True):
    """The pretrained face tower as it is (loss None), or fine-tuned on the fold's training people."""
    if loss is None:
        tower = build_tower("face-resnet", profile.input_shape, PRETRAINED["face-resnet"])
        return Embedder(tower, profile).embed_batch, 0.0, {}
    config = TrainConfig(**{"loss": loss, "tower": "face-resnet", **overrides})
    counts = faces.counts()  # PK batches need K images of each identity trained on (LFW: many have one)
    usable = dataclasses.replace(split, train=[n for n in split.train if counts[n] >= config.batch_k],
                                 validation=[n for n in split.validation if counts[n] >= 2])
    return run_siamese(loss, {"tower": "face-resnet", **overrides}, faces, usable, profile, verbose, refit_after)


def run_dlib(images):
    """dlib's embeddings of `images` and which of them had a face found (failures to acquire)."""
    start = time.perf_counter()
    embeddings, found = dlib_face.DlibFacePipeline().embed(images)
    return embeddings, found, time.perf_counter() - start


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
    face_data = data.profile == "face"
    profile = get_profile("face-small" if face_data else data.profile)
    if not face_data:
        models = [m for m in models if m not in FACE and m != "dlib"]
    elif "dlib" in models and not dlib_face.available():
        print("skipping dlib: dlib-bin and face-recognition-models are not installed "
              "(pip install -r requirements-bench.txt)")
        models.remove("dlib")
    faces, face_profile = None, chip_profile(get_profile("face"))
    if any(m in FACE for m in models):
        start = time.perf_counter()
        faces, failed = acquire_dataset(data, get_profile("face"))
        print(f"faces: detected and aligned in {len(faces)} of {len(data)} images "
              f"({len(failed)} failures to acquire), {1000 * (time.perf_counter() - start) / len(data):.1f} ms an image")
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
            extra, labels = {}, test.labels
            if model in FACE:
                embed, seconds, extra = run_face_resnet(FACE[model], overrides, faces, split, face_profile,
                                                        args.verbose, args.refit)
                held_faces = faces.subset(held)
                embeddings, metric, labels = embed(preprocess_batch(held_faces.images, face_profile)), \
                    "euclidean", held_faces.labels
                extra["failures_to_acquire"] = len(test) - len(held_faces)
            elif model == "dlib":
                embeddings, found, seconds = run_dlib(test.images)
                embeddings, metric, labels = embeddings[found], "euclidean", test.labels[found]
                extra = {"failures_to_acquire": int((~found).sum())}
            elif model in SIAMESE:
                embed, seconds, extra = run_siamese(SIAMESE[model], overrides, data, split, profile, args.verbose,
                                                     args.refit)
                embeddings, metric = embed(test_x), "euclidean"
            else:
                start = time.perf_counter()
                embeddings, metric = BASELINES[model](fit_x, fit.labels, test_x), "cosine"
                seconds = time.perf_counter() - start
            result, point, area = evaluate(embeddings, labels, metric)
            results[model][fold] = {"eer": result.value, "auc": area, "seconds": round(seconds, 1),
                                    "false_matches": point.fmr.errors, "impostor": point.fmr.total,
                                    "false_non_matches": point.fnmr.errors, "genuine": point.fnmr.total,
                                    **extra}
            counts = f"(FMR {point.fmr.errors}/{point.fmr.total}, FNMR {point.fnmr.errors}/{point.fnmr.total})"
            fta = f"  no face {extra['failures_to_acquire']}" if "failures_to_acquire" in extra else ""
            print(f"fold {fold} ({held[0]}..{held[-1]})  {model:24s} EER {100 * result.value:.2f}% {counts:30s} "
                  f"AUC {area:.4f}  fit {seconds:6.1f} s{fta}", flush=True)
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
        print(f"  {model:24s} EER {100 * mean_eer:5.2f}%  ({folds_text})  AUC {mean_auc:.4f}  "
              f"fit {seconds:.1f} s per fold")
    print(json.dumps({"data": data.name, "fingerprint": data.fingerprint, "folds": list(folds),
                      "per_fold": args.per_fold, "validation_identities": args.validation_identities,
                      "settings": overrides, "models": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
