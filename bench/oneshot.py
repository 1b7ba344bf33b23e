"""N-way one-shot accuracy on unseen identities: Siamese towers against the classical baselines.

    python bench/oneshot.py --data ../shared/data/grocery --ways 2,5,10 --trials 1000
    python bench/oneshot.py --data ../shared/data/grocery --models raw-pixels,pca,colour-hist

The folds, sampling, profiles and fitting are bench/accuracy.py's (its functions, not a copy):
each model is fitted on a fold's training identities and embeds its held-out images. An
episode then picks N held-out classes, one support image of each and another image of one of
them as the query; the prediction is the nearest support (ties broken at random). Each
held-out class is the query equally often (a seeded rotation; the other N - 1 classes and
all images are drawn at random), so a class that is hard to tell apart weighs as much as any.
Forgeries take no part (a forgery is not its writer's image). Printed per fold and N, and
pooled over folds: correct / episodes, accuracy and a 95% Wilson interval; chance is 1/N.
Episodes of a fold share its images, so that interval counts only the sampling of
episodes, not of classes: the spread between folds is the wider measure. Last line JSON.
"""

import argparse
import json
import math
import os
import sys
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.accuracy import add_protocol_arguments, fold_embeddings, held_out, make_fold, prepare
from verifier.core.distances import cross_distances


class OneShot(NamedTuple):
    """N-way one-shot episodes: how many were right out of how many."""

    correct: int
    episodes: int
    ways: int

    @property
    def accuracy(self):
        return self.correct / self.episodes


def wilson_interval(correct, total, z=1.96):
    """95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if total <= 0:
        raise ValueError("an interval needs at least one trial")
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def one_shot_accuracy(embeddings, labels, ways, trials, rng, metric):
    """`trials` seeded N-way episodes over `embeddings`: one support per class, the nearest wins.

    Query classes rotate through a seeded order of the classes with 2+ images (each the query
    equally often); the other classes, the support images and the query image are drawn with `rng`.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rows = {c: np.flatnonzero(labels == c) for c in classes}
    queryable = [c for c in classes if len(rows[c]) >= 2]
    if not 2 <= ways <= len(classes) or not queryable:
        raise ValueError(f"{ways}-way episodes need {ways} classes and one with 2+ images; "
                         f"have {len(classes)} classes, {len(queryable)} with 2+")
    distances = cross_distances(embeddings, embeddings, metric)
    order = rng.permutation(np.array(queryable))
    others = {c: classes[classes != c] for c in queryable}
    correct = 0
    for trial in range(trials):
        target = order[trial % len(order)]
        query, own = rng.choice(rows[target], size=2, replace=False)
        supports = [own] + [rng.choice(rows[c]) for c in rng.choice(others[target], size=ways - 1, replace=False)]
        d = distances[query, supports]
        correct += int(rng.choice(np.flatnonzero(d == d.min())) == 0)
    return OneShot(correct, trials, ways)


def parse_ways(text):
    """--ways "2,5,10,all" -> [2, 5, 10, "all"] ("all": every class held out in the fold)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item:
            out.append("all" if item == "all" else int(item))
    return out


def ways_for(spec, n_classes):
    """The N of --ways that n_classes held-out classes can make, in order and once each."""
    out = []
    for w in spec:
        n = n_classes if w == "all" else w
        if 2 <= n <= n_classes and n not in out:
            out.append(n)
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_protocol_arguments(p)
    p.add_argument("--ways", default="2,5,10,all", help="comma list of N (all: every held-out class of the fold)")
    p.add_argument("--trials", type=int, default=1000, help="episodes per fold and N")
    return p


def _record(result):
    low, high = wilson_interval(result.correct, result.episodes)
    return {"correct": result.correct, "episodes": result.episodes, "accuracy": result.accuracy,
            "interval": [low, high], "chance": 1 / result.ways}


def _text(result):
    low, high = wilson_interval(result.correct, result.episodes)
    return (f"{result.correct:5d}/{result.episodes:<5d} {100 * result.accuracy:5.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}]  chance {100 / result.ways:.1f}%")


def main(argv=None):
    args = build_parser().parse_args(argv)
    spec = parse_ways(args.ways)
    setup = prepare(args)
    data = setup.data
    results = {m: {} for m in setup.models}  # model -> ways -> fold -> OneShot
    seconds = {m: [] for m in setup.models}
    for number in setup.folds:
        fold = make_fold(data, held_out(data.identities, number, setup.per_fold), args.validation_identities,
                         args.seed, setup.profile)
        for model in setup.models:
            fitted = fold_embeddings(model, fold, data, setup.faces, setup.profile, args, setup.overrides)
            seconds[model].append(fitted.seconds)
            genuine = ~np.asarray(fitted.forged, dtype=bool)
            embeddings, labels = fitted.embeddings[genuine], fitted.labels[genuine]
            for ways in ways_for(spec, len(np.unique(labels))):
                rng = np.random.default_rng([args.seed, number, ways])
                result = one_shot_accuracy(embeddings, labels, ways, args.trials, rng, fitted.metric)
                results[model].setdefault(ways, {})[number] = result
                print(f"fold {number} ({fold.held[0]}..{fold.held[-1]})  {model:28s} {ways:3d}-way  {_text(result)}"
                      f"  fit {fitted.seconds:6.1f} s", flush=True)
    print("\npooled over folds " + ",".join(str(f) for f in setup.folds))
    summary = {}
    for model in setup.models:
        summary[model] = {"mean_fit_seconds": round(float(np.mean(seconds[model])), 1), "ways": {}}
        for ways, per_fold in results[model].items():
            runs = per_fold.values()
            pooled = OneShot(sum(r.correct for r in runs), sum(r.episodes for r in runs), ways)
            folds_text = " / ".join(f"{100 * r.accuracy:.1f}" for r in per_fold.values())
            print(f"  {model:28s} {ways:3d}-way  {_text(pooled)}  ({folds_text})")
            summary[model]["ways"][str(ways)] = {**_record(pooled),
                                                 "folds": {str(k): _record(r) for k, r in per_fold.items()}}
    print(json.dumps({"data": data.name, "fingerprint": data.fingerprint, "folds": setup.folds,
                      "per_fold": setup.per_fold, "images": len(data), "per_class": args.per_class,
                      "profile": setup.profile.name, "trials": args.trials, "seed": args.seed,
                      "validation_identities": args.validation_identities, "settings": setup.overrides,
                      "models": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
