"""Open-set verification accuracy: Siamese towers against classical baselines.

    python bench/accuracy.py --data orl --folds 4
    python bench/accuracy.py --data ../shared/data/cifar10-test --models raw-pixels,pca,colour-hist

Fold f holds out identities f*P+1 .. f*P+P (in the data set's identity order; the folds are
disjoint); every model is fitted on the other identities only (the Siamese models keep a few
of those aside to choose the number of epochs, then train again on all of them, as
`python -m training` does; `--no-refit` scores the early-stopped model). On the held-out
images it scores all genuine pairs (ORL: 10 x 45 = 450) and all impostor pairs (4,500)
and prints the exact EER (linear interpolation where FMR and FNMR cross, with counts at
the nearest real threshold), the AUC and the fitting time, per fold and as a mean; the
last line is JSON.

The fold layout (`fold_layout`, printed): P = --per-fold, by default 10 (ORL: 4 x 10 = every
person held out once), at most identities // folds; signatures: writers // folds. Data with
fewer than 20 identities (Fashion-MNIST, CIFAR-10: 10 classes) gets 3 folds by default, 3
classes a fold: 4 folds could hold out only 2, whose impostor pairs would all be one pair of
classes and whose one-shot episodes (bench/oneshot.py) only 2-way; 3 a fold keeps 7 of 10
classes to train on and holds out 9 of the 10 once.

Large data sets: `--per-class N` (default 200) keeps a seeded sample of at most N images of
each identity (and N forgeries) before the folds are made (Fashion-MNIST: 7,000 a class;
CIFAR-10: 500). All genuine pairs are scored (CIFAR-10: 3 x 19,900 a fold); impostor pairs
above `--max-impostors` (default 50,000) are a seeded uniform sample, the count available
printed beside it (ORL's 4,500 and SigComp2011's at most 45,072 a fold stay complete).

Face data (ORL, a folder of face photos) adds the face pipeline's rows: faces detected and
aligned once (verifier.core.acquisition; images with no face are failures to acquire, counted
and left out of that model's pairs), then dlib's pretrained ResNet as it is
(`face-resnet`), and fine-tuned on the fold's training people with triplet or contrastive
(`face-resnet-triplet`, `face-resnet-contrastive`, settings from --set as for the small
CNN); OpenCV Zoo's SFace as it is (`sface`); and the two side by side (`face-fusion` as they
are, `face-fusion-triplet` with the face ResNet fine-tuned under the fused embedding). `dlib`
is face_recognition's own pipeline (bench/dlib_face.py), measured in the same run when
`dlib-bin` and `face-recognition-models` are installed (requirements-bench.txt).
The small CNN and the classical baselines keep the `face-small` profile. Other data uses the
profile its loader names (imagesets: `data.profile`); `--profile NAME` overrides either. On the
generic tower (product photos, colour thumbnails) and on pixel-gradients (grey thumbnails) the
`siamese-*` rows fit the head that `python -m training` would (LDA from 10 training identities,
else whitening: no epochs, so the loss does not enter); `--set head=learnt` trains it with the
loss instead.
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
from training.baselines import ALIASES, BASELINES
from calibration.metrics import auc, eer
from calibration.pairs import pair_comparisons
from imagesets import LabelledImages, load_dataset
from training.bundles import default_split, fit_tower, paired_identities, usable_split
from training.towers import default_tower
from training.trainer import FINE_TUNE, TrainConfig, build_model, default_head
from verifier.core.acquisition import acquire_dataset, chip_profile
from verifier.core.embedder import Embedder
from verifier.core.profiles import get_profile, preprocess_batch

SIAMESE = {"siamese-contrastive": "contrastive", "siamese-triplet": "triplet", "siamese-cosface": "cosface"}
# face rows: model -> (pretrained tower, fine-tuning loss or None for the tower as it is)
FACE = {"face-resnet": ("face-resnet", None), "face-resnet-triplet": ("face-resnet", "triplet"),
        "face-resnet-contrastive": ("face-resnet", "contrastive"), "sface": ("sface", None),
        "face-fusion": ("face-fusion", None), "face-fusion-triplet": ("face-fusion", "triplet")}
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
    settings = {"loss": loss, "tower": default_tower(profile.name), **overrides}
    if "head" not in settings:  # a tower with a fitted head: the one python -m training would choose
        settings["head"] = default_head(settings["tower"], paired_identities(data, split.train))
    config = TrainConfig(**settings)
    fitted = fit_tower(config, data, split, profile, validation=data.subset(split.validation),
                       refit_after=refit_after, verbose=verbose)
    result = fitted.training
    return Embedder(fitted.final.model, profile).embed_batch, fitted.seconds, {
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "best_validation_eer": result.best_validation_eer, "refit": fitted.refit_identities is not None}


def run_face_tower(tower, loss, overrides, faces, split, profile, verbose, refit_after=True):
    """A pretrained face tower as it is (loss None), or fine-tuned on the fold's training people
    with `python -m training`'s fine-tuning recipe (FINE_TUNE) under `loss`, plus any --set overrides."""
    if loss is None:  # what `python -m training --epochs 0` bundles (mirror-averaged with --set flip_tta=true)
        _, model = build_model(TrainConfig(**{**overrides, "tower": tower, "epochs": 0}), profile)
        return Embedder(model, profile).embed_batch, 0.0, {}
    overrides = {**FINE_TUNE, "loss": loss, **overrides}
    config = TrainConfig(**{"tower": tower, **overrides})
    usable = usable_split(faces, split, config.batch_k)  # PK batches need K images a person (LFW: many have one)
    return run_siamese(loss, {"tower": tower, **overrides}, faces, usable, profile, verbose, refit_after)


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
    available: int = 0  # impostor pairs of this kind before any sampling


def _score(genuine, impostor, available=None):
    result = eer(genuine, impostor)
    point = next(p for p in result.bracket if p.threshold == result.threshold)
    return Score(result, point, auc(genuine, impostor), len(impostor) if available is None else available)


def evaluate(embeddings, labels, forged, metric, max_impostors=None, seed=0):
    """Scores over all held-out pairs, per kind of impostor: {"all": ...} for data without
    forgeries; for signatures {"skilled": genuine vs forgeries of the claimed writer,
    "random": genuine vs other writers' genuine signatures}, reported apart. Impostor pairs
    between identities above `max_impostors` are a seeded sample (forgeries: all kept)."""
    pairs = pair_comparisons(embeddings, labels, forged, metric, max_impostors=max_impostors, seed=seed)
    impostor = pairs.label == 0
    skilled = int((impostor & pairs.forgery).sum())
    if not skilled:
        return {"all": _score(pairs.genuine, pairs.impostor, pairs.sampled_from)}
    return {"skilled": _score(pairs.genuine, pairs.distance[impostor & pairs.forgery]),
            "random": _score(pairs.genuine, pairs.distance[impostor & ~pairs.forgery], pairs.sampled_from - skilled)}


def add_protocol_arguments(p):
    """The data, fold, sampling and model arguments bench/accuracy.py and bench/oneshot.py share."""
    p.add_argument("--data", default="orl")
    p.add_argument("--folds", type=int, default=None,
                   help="disjoint folds of held-out identities (default 4; fewer than 20 identities: 3)")
    p.add_argument("--per-fold", type=int, default=None,
                   help="identities held out per fold (default min(10, identities / folds); "
                        "signatures: the writers / --folds)")
    p.add_argument("--only-folds", default=None, help="comma list of fold numbers (1-based) to run")
    p.add_argument("--per-class", type=int, default=200,
                   help="seeded sample of at most N images of each identity, before the folds (0: all)")
    p.add_argument("--profile", default=None,
                   help="preprocessing profile of the siamese-* models and the baselines "
                        "(default: the data's own; face photos: face-small)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma list of: {', '.join(MODELS)} (pca: eigenfaces by its general name)")
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


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_protocol_arguments(p)
    p.add_argument("--max-impostors", type=int, default=50_000,
                   help="impostor pairs a fold above which a seeded sample of this many is scored (0: all)")
    return p


def choose_models(spec, data):
    """The --models list, less the face rows on data that is not faces and dlib when it is not installed."""
    models = [m for m in spec.split(",") if m]
    unknown = sorted(set(models) - set(MODELS) - set(ALIASES))
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


def fold_layout(n_identities, kind, folds=None, per_fold=None):
    """(folds, identities held out a fold, why) for a data set of `kind` (its profile's name);
    the folds are disjoint slices of the identity list, so folds * per_fold must fit."""
    few = folds is None and n_identities < 20 and kind != "signature"
    folds = (3 if few else 4) if folds is None else folds
    why = "--per-fold given"
    if per_fold is None:
        if kind == "signature":
            per_fold, why = n_identities // folds, "signatures: the writers / folds"
        else:
            per_fold = min(10, n_identities // folds)
            why = "10 a fold" if per_fold == 10 else "identities / folds"
    if few:
        why = f"fewer than 20 identities: 3 folds, {why}"
    if folds < 1 or per_fold < 2 or folds * per_fold > n_identities or per_fold + 4 > n_identities:
        raise SystemExit(f"{n_identities} identities cannot make {folds} folds of {per_fold}")
    return folds, per_fold, why


def held_out(identities, number, per_fold):
    """Fold `number`'s (1-based) held-out identities."""
    return identities[(number - 1) * per_fold:number * per_fold]


def sample_per_class(data, n, seed):
    """At most `n` images of each identity (genuine and forged apart), a seeded choice, order kept."""
    if not n:
        return data
    rng = np.random.default_rng([seed, 2])
    groups = data.labels * 2 + data.forged
    keep = []
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        keep.extend(rows if len(rows) <= n else rng.choice(rows, size=n, replace=False))
    if len(keep) == len(data):
        return data
    keep = np.sort(np.array(keep, dtype=np.int64))
    return dataclasses.replace(data, images=[data.images[i] for i in keep], labels=data.labels[keep],
                               forged=data.forged[keep])


class Setup(NamedTuple):
    """What both benches run on: the (sampled) data, models, profile, faces and fold layout."""

    data: LabelledImages
    models: list
    profile: object
    faces: object
    folds: list
    per_fold: int
    overrides: dict


def prepare(args):
    """Load and sample the data, choose models and profile, detect faces once, lay out the folds (printed)."""
    overrides = {"seed": args.seed, **parse_overrides(args.set)}
    full = load_dataset(args.data, strict=True)
    data = sample_per_class(full, args.per_class, args.seed)
    models = choose_models(args.models, data)
    profile = get_profile(args.profile or ("face-small" if data.profile == "face" else data.profile))
    faces = detect_faces(data) if any(m in FACE for m in models) else None
    n_folds, per_fold, why = fold_layout(len(data.identities), data.profile, args.folds, args.per_fold)
    args.folds, args.per_fold = n_folds, per_fold
    folds = range(1, n_folds + 1) if args.only_folds is None else [int(f) for f in args.only_folds.split(",")]
    print(f"{data.name}: {len(data.identities)} identities, {len(data)} images; "
          f"{args.folds} folds of {args.per_fold} held-out identities; settings {overrides}")
    never = len(data.identities) - n_folds * per_fold
    print(f"layout: {why}; {never} of {len(data.identities)} identities never held out; profile {profile.name}"
          + (f"; at most {args.per_class} images an identity: {len(data)} of {len(full)}" if len(data) < len(full)
             else ""))
    return Setup(data, models, profile, faces, list(folds), per_fold, overrides)


def make_fold(data, held, validation_identities, seed, profile):
    test = data.subset(held)
    split = default_split(data.identities, held, validation_identities, seed)
    fit = data.subset(split.train + split.validation)
    return Fold(held, split, test, preprocess_batch(test.images, profile), fit, preprocess_batch(fit.images, profile))


class Embedded(NamedTuple):
    """A model fitted for one fold: its embeddings of the held-out images that it could embed."""

    embeddings: np.ndarray
    labels: np.ndarray
    forged: np.ndarray
    metric: str
    seconds: float
    extra: dict


def fold_embeddings(model, fold, data, faces, profile, args, overrides):
    """Fit `model` on the fold's training identities and embed its held-out images."""
    extra, labels, forged = {}, fold.test.labels, fold.test.forged
    if model in FACE:
        face_profile = chip_profile(get_profile("face"))
        embed, seconds, extra = run_face_tower(*FACE[model], overrides, faces, fold.split, face_profile,
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
        embeddings, metric = BASELINES[ALIASES.get(model, model)](fold.fit_x, fold.fit.labels, fold.test_x), "cosine"
        seconds = time.perf_counter() - start
    return Embedded(embeddings, labels, forged, metric, seconds, extra)


def score_model(model, fold, data, faces, profile, args, overrides):
    """Fit `model` for the fold and score its held-out pairs: (scores per kind of impostor, seconds, extra)."""
    fitted = fold_embeddings(model, fold, data, faces, profile, args, overrides)
    return (evaluate(fitted.embeddings, fitted.labels, fitted.forged, fitted.metric, args.max_impostors or None,
                     args.seed), fitted.seconds, fitted.extra)


def _record(score):
    point = score.point
    record = {"eer": score.result.value, "auc": score.auc, "false_matches": point.fmr.errors,
              "impostor": point.fmr.total, "false_non_matches": point.fnmr.errors, "genuine": point.fnmr.total}
    if score.available > point.fmr.total:
        record["impostor_available"] = score.available
    return record


def fold_row(fold_number, fold, model, scores, seconds, extra):
    """Print one model's fold line (one per kind of impostor); returns its JSON record."""
    fta = f"  no face {extra['failures_to_acquire']}" if "failures_to_acquire" in extra else ""
    for kind, score in scores.items():
        point = score.point
        counts = f"(FMR {point.fmr.errors}/{point.fmr.total}, FNMR {point.fnmr.errors}/{point.fnmr.total})"
        label = model if kind == "all" else f"{model} {kind}"
        sampled = f"  impostors sampled of {score.available}" if score.available > point.fmr.total else ""
        print(f"fold {fold_number} ({fold.held[0]}..{fold.held[-1]})  {label:32s} EER {100 * score.result.value:.2f}% "
              f"{counts:32s} AUC {score.auc:.4f}  fit {seconds:6.1f} s{fta}{sampled}", flush=True)
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
    setup = prepare(args)
    data, models, profile = setup.data, setup.models, setup.profile
    results = {m: {} for m in models}
    for number in setup.folds:
        fold = make_fold(data, held_out(data.identities, number, setup.per_fold), args.validation_identities,
                         args.seed, profile)
        for model in models:
            results[model][number] = fold_row(number, fold, model, *score_model(
                model, fold, data, setup.faces, profile, args, setup.overrides))
    summary = summarise(models, results, setup.folds)
    print(json.dumps({"data": data.name, "fingerprint": data.fingerprint, "folds": setup.folds,
                      "per_fold": setup.per_fold, "validation_identities": args.validation_identities,
                      "settings": setup.overrides, "images": len(data), "per_class": args.per_class,
                      "max_impostors": args.max_impostors, "profile": profile.name, "models": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
