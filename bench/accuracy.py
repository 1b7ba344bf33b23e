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
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench import dlib_face
from bench.baselines import BASELINES
from calibration.metrics import auc, eer
from calibration.pairs import pair_comparisons
from imagesets import load_dataset
from training.bundles import default_split, fit_tower
from training.towers import PRETRAINED, build_tower
from training.trainer import TrainConfig
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
    config = TrainConfig(**{"loss": loss, **overrides})
    fitted = fit_tower(config, data, split, profile, validation=data.subset(split.validation),
                       refit_after=refit_after, verbose=verbose)
    result = fitted.training
    return Embedder(fitted.final.model, profile).embed_batch, fitted.seconds, {
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "best_validation_eer": result.best_validation_eer, "refit": fitted.refit_identities is not None}


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


class Score(NamedTuple):
    """One kind of impostor's EER result, the operating point at its threshold (with counts) and AUC."""

    result: object  # calibration.metrics.EER
    point: object
    auc: float


def _score(genuine, impostor):
    result = eer(genuine, impostor)
    point = next(p for p in result.bracket if p.threshold == result.threshold)
    return Score(result, point, auc(genuine, impostor))


def evaluate(embeddings, labels, forged, metric):
    """Scores over all held-out pairs, per kind of impostor: {"all": ...} for data without
    forgeries; for signatures {"skilled": genuine vs forgeries of the claimed writer,
    "random": genuine vs other writers' genuine signatures}, reported apart."""
    pairs = pair_comparisons(embeddings, labels, forged, metric)
    if not pairs.forgery.any():
        return {"all": _score(pairs.genuine, pairs.impostor)}
    impostor = pairs.label == 0
    return {"skilled": _score(pairs.genuine, pairs.distance[impostor & pairs.forgery]),
            "random": _score(pairs.genuine, pairs.distance[impostor & ~pairs.forgery])}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="orl")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--per-fold", type=int, default=None,
                   help="identities held out per fold (default 10; signatures: the writers / --folds)")
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
    return p


def choose_models(spec, data):
    """The --models list, less the face rows on data that is not faces and dlib when it is not installed."""
    models = [m for m in spec.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown models: {', '.join(unknown)}")
    if data.profile != "face":
        return [m for m in models if m not in FACE and m != "dlib"]
    if "dlib" in models and not dlib_face.available():
        print("skipping dlib: dlib-bin and face-recognition-models are not installed "
              "(pip install -r requirements-bench.txt)")
        models.remove("dlib")
    return models


def detect_faces(data):
    """Every image's aligned face chip, detected once for all folds (no face: left out and counted)."""
    start = time.perf_counter()
    faces, failed = acquire_dataset(data, get_profile("face"))
    print(f"faces: detected and aligned in {len(faces)} of {len(data)} images "
          f"({len(failed)} failures to acquire), {1000 * (time.perf_counter() - start) / len(data):.1f} ms an image")
    return faces


class Fold(NamedTuple):
    """One fold's held-out identities and what each kind of model fits on."""

    held: list
    split: object  # training.splits.Split
    test: object  # LabelledImages of the held-out identities
    test_x: np.ndarray
    fit: object  # LabelledImages of every other identity (what the baselines fit on)
    fit_x: np.ndarray


def make_fold(data, held, validation_identities, seed, profile):
    test = data.subset(held)
    split = default_split(data.identities, held, validation_identities, seed)
    fit = data.subset(split.train + split.validation)
    return Fold(held, split, test, preprocess_batch(test.images, profile), fit, preprocess_batch(fit.images, profile))


def score_model(model, fold, data, faces, profile, args, overrides):
    """Fit `model` for the fold and score its held-out pairs: (EER result, operating point, AUC, seconds, extra)."""
    extra, labels, forged = {}, fold.test.labels, fold.test.forged
    if model in FACE:
        face_profile = chip_profile(get_profile("face"))
        embed, seconds, extra = run_face_resnet(FACE[model], overrides, faces, fold.split, face_profile,
                                                args.verbose, args.refit)
        held_faces = faces.subset(fold.held)
        embeddings, metric, labels = embed(preprocess_batch(held_faces.images, face_profile)), \
            "euclidean", held_faces.labels
        forged = held_faces.forged
        extra["failures_to_acquire"] = len(fold.test) - len(held_faces)
    elif model == "dlib":
        embeddings, found, seconds = run_dlib(fold.test.images)
        embeddings, metric, labels = embeddings[found], "euclidean", fold.test.labels[found]
        forged = fold.test.forged[found]
        extra = {"failures_to_acquire": int((~found).sum())}
    elif model in SIAMESE:
        embed, seconds, extra = run_siamese(SIAMESE[model], overrides, data, fold.split, profile, args.verbose,
                                            args.refit)
        embeddings, metric = embed(fold.test_x), "euclidean"
    else:
        start = time.perf_counter()
        embeddings, metric = BASELINES[model](fold.fit_x, fold.fit.labels, fold.test_x), "cosine"
        seconds = time.perf_counter() - start
    return evaluate(embeddings, labels, forged, metric), seconds, extra


def _record(score):
    point = score.point
    return {"eer": score.result.value, "auc": score.auc, "false_matches": point.fmr.errors,
            "impostor": point.fmr.total, "false_non_matches": point.fnmr.errors, "genuine": point.fnmr.total}


def fold_row(fold_number, fold, model, scores, seconds, extra):
    """Print one model's fold line (one per kind of impostor); returns its JSON record."""
    fta = f"  no face {extra['failures_to_acquire']}" if "failures_to_acquire" in extra else ""
    for kind, score in scores.items():
        point = score.point
        counts = f"(FMR {point.fmr.errors}/{point.fmr.total}, FNMR {point.fnmr.errors}/{point.fnmr.total})"
        label = model if kind == "all" else f"{model} {kind}"
        print(f"fold {fold_number} ({fold.held[0]}..{fold.held[-1]})  {label:32s} EER {100 * score.result.value:.2f}% "
              f"{counts:32s} AUC {score.auc:.4f}  fit {seconds:6.1f} s{fta}", flush=True)
    kinds = {kind: _record(score) for kind, score in scores.items()}
    return {**kinds.pop("all", {}), **kinds, "seconds": round(seconds, 1), **extra}


def summarise(models, results, folds):
    """Print the means over folds (per kind of impostor for signatures); returns the JSON summary per model."""
    print("\nmean over folds " + ",".join(str(f) for f in folds))
    summary = {}
    for model in models:
        per_fold = list(results[model].values())
        kinds = [k for k in ("skilled", "random") if k in per_fold[0]] or [None]
        summary[model] = {"mean_fit_seconds": round(float(np.mean([r["seconds"] for r in per_fold])), 1),
                          "folds": {str(k): v for k, v in results[model].items()}}
        for kind in kinds:
            rows = [r if kind is None else r[kind] for r in per_fold]
            mean_eer, mean_auc = float(np.mean([r["eer"] for r in rows])), float(np.mean([r["auc"] for r in rows]))
            prefix = "" if kind is None else f"{kind}_"
            summary[model].update({f"{prefix}mean_eer": mean_eer, f"{prefix}mean_auc": mean_auc})
            folds_text = " / ".join(f"{100 * r['eer']:.2f}" for r in rows)
            label = model if kind is None else f"{model} {kind}"
            print(f"  {label:32s} EER {100 * mean_eer:5.2f}%  ({folds_text})  AUC {mean_auc:.4f}  "
                  f"fit {summary[model]['mean_fit_seconds']:.1f} s per fold")
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = {"seed": args.seed, **parse_overrides(args.set)}
    data = load_dataset(args.data, strict=True)
    models = choose_models(args.models, data)
    profile = get_profile("face-small" if data.profile == "face" else data.profile)
    faces = detect_faces(data) if any(m in FACE for m in models) else None
    folds = range(1, args.folds + 1) if args.only_folds is None else [int(f) for f in args.only_folds.split(",")]
    if args.per_fold is None:
        args.per_fold = len(data.identities) // args.folds if data.profile == "signature" else 10
    if args.folds * args.per_fold > len(data.identities) or args.per_fold + 4 > len(data.identities):
        raise SystemExit(f"{len(data.identities)} identities cannot make {args.folds} folds of {args.per_fold}")
    print(f"{data.name}: {len(data.identities)} identities, {len(data)} images; "
          f"{args.folds} folds of {args.per_fold} held-out identities; settings {overrides}")
    results = {m: {} for m in models}
    for number in folds:
        fold = make_fold(data, data.identities[(number - 1) * args.per_fold:number * args.per_fold],
                         args.validation_identities, args.seed, profile)
        for model in models:
            results[model][number] = fold_row(number, fold, model,
                                              *score_model(model, fold, data, faces, profile, args, overrides))
    summary = summarise(models, results, folds)
    print(json.dumps({"data": data.name, "fingerprint": data.fingerprint, "folds": list(folds),
                      "per_fold": args.per_fold, "validation_identities": args.validation_identities,
                      "settings": overrides, "models": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
