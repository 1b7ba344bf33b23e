"""How good and how fast is image similarity search (POST /v1/search) over a catalogue?

    python bench/search.py --bundle bundles/face [--data ../shared/data/grocery --data ../shared/data/cifar10-test]
                           [--per-class 50] [--sizes 10000 100000] [--no-detect]

Quality, per data set: every image of the held-out classes (those the bundle's recipe did not
train or validate on) is a query against a catalogue of all the other held-out images (the
query itself left out), ranked by the distance the search reports (a 1:1 pair distance, float64,
as `Gallery.nearest_templates` rescores). Printed: recall@1 and recall@5 (share of queries with
an image of their class among the first 1 or 5) and mAP@R (Musgrave et al. 2020: R = the other
images of the query's class, average precision over the first R). The same figures for a
raw-pixel baseline (`training.baselines.raw_pixels`: cosine distance between the pixels of the
profile bench/accuracy.py gives the data, `face-small` for a plain folder) come in the same
run, so a bundle's figures have a reference. `--per-class N` (default 50) keeps a seeded sample
of at most N images a class. A bundle whose profile detects faces drops images without one
(failures to acquire, counted; the baseline is then scored on those images too);
`--no-detect` feeds whole images to its tower instead.
`--bundle` once serves every data set; given as often as `--data`, the i-th serves the i-th.

Speed: milliseconds per query of `Gallery.nearest_templates` (k = 10, template ids included)
at 10,000 and 100,000 templates of synthetic unit vectors of the bundle's embedding size in a
temporary SQLite store, filled with bench/identify.py's helpers. The last line is JSON.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.identify import BUNDLE_ID, embedding_shape, fill, time_ms

DATA = ("../shared/data/grocery", "../shared/data/cifar10-test")
EMBED_BATCH = 64


# -- ranking metrics ------------------------------------------------------------------------

def recall_at_k(relevant, k):
    """Share of queries with a relevant item among their first `k`; `relevant` is (queries, ranked) bool."""
    relevant = np.asarray(relevant, bool)
    return float(relevant[:, :k].any(axis=1).mean()) if len(relevant) else float("nan")


def map_at_r(relevant, r):
    """Mean over queries of AP@R: (1/R) * sum over the first R ranks of precision@i where rank i is relevant.

    `r` is each query's count of relevant items in the catalogue (queries with none are left out).
    """
    relevant, r = np.asarray(relevant, bool), np.asarray(r, np.int64)
    keep = r > 0
    relevant, r = relevant[keep], r[keep]
    if not len(r):
        return float("nan")
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks
    within = ranks[None, :] <= r[:, None]
    return float(((precision * relevant * within).sum(axis=1) / r).mean())


def rankings(embeddings, labels, metric):
    """(relevant, r) of each image queried against all the others: the ranked catalogue's same-class
    flags (ties in catalogue order) and each query's count of same-class catalogue images."""
    from verifier.core.distances import cross_distances

    labels = np.asarray(labels)
    distances = cross_distances(embeddings, embeddings, metric)
    np.fill_diagonal(distances, np.inf)  # the query is not in its own catalogue
    order = np.argsort(distances, axis=1, kind="stable")[:, :-1]
    relevant = labels[order] == labels[:, None]
    r = np.bincount(labels, minlength=labels.max() + 1)[labels] - 1
    return relevant, r


def scores(embeddings, labels, metric):
    relevant, r = rankings(embeddings, labels, metric)
    return {"recall@1": round(recall_at_k(relevant, 1), 4), "recall@5": round(recall_at_k(relevant, 5), 4),
            "mAP@R": round(map_at_r(relevant, r), 4), "queries": int(len(labels))}


# -- data and embeddings ----------------------------------------------------------------------

def sample_per_class(data, per_class, seed):
    """At most `per_class` images of each class, a seeded sample (order kept)."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in range(len(data.identities)):
        rows = np.flatnonzero(data.labels == label)
        if len(rows) > per_class:
            rows = np.sort(rng.choice(rows, per_class, replace=False))
        keep += rows.tolist()
    return keep


def held_out(data, bundle):
    """Class names the bundle's recipe neither trained nor validated on."""
    from verifier.core.bundle import read_meta

    recipe = read_meta(bundle).get("recipe", {})
    seen = set(recipe.get("train_identities", [])) | set(recipe.get("validation_identities", []))
    return [name for name in data.identities if name not in seen]


def embed_bundle(scorer, images, no_detect):
    """(embeddings, kept mask): images without a face (detecting profiles) are not kept."""
    from verifier.core.acquisition import acquire, chip_profile

    profile = chip_profile(scorer.profile) if no_detect else scorer.profile
    chunks, kept = [], []
    for start in range(0, len(images), EMBED_BATCH):
        acquired = acquire(images[start:start + EMBED_BATCH], profile)
        chunks.append(scorer.embed_inputs(acquired.inputs))
        kept.append(acquired.acquired)
    return np.concatenate(chunks), np.concatenate(kept)


def quality(spec, bundle, args):
    """The bundle's and the raw-pixel baseline's search figures on one data set's held-out classes."""
    from training.baselines import raw_pixels
    from imagesets import load_dataset
    from verifier.core.profiles import get_profile, preprocess_batch
    from verifier.core.scorer import Scorer

    data = load_dataset(spec)
    classes = held_out(data, bundle)
    data = data.subset(classes)
    rows = sample_per_class(data, args.per_class, args.seed)
    images, labels = [data.images[i] for i in rows], data.labels[rows]
    scorer = Scorer.from_bundle(bundle)
    start = time.perf_counter()
    embeddings, kept = embed_bundle(scorer, images, args.no_detect)
    seconds = time.perf_counter() - start
    profile = get_profile(args.baseline_profile or ("face-small" if data.profile == "face" else data.profile))
    pixels = raw_pixels(None, None, preprocess_batch(images, profile))
    row = {"data": spec, "classes": len(classes), "images": len(images), "bundle": str(bundle),
           "model": scorer.bundle_id, "metric": scorer.metric, "acquired": int(kept.sum()),
           "embed_ms_per_image": round(1000 * seconds / max(len(images), 1), 2),
           "bundle_scores": scores(embeddings, labels[kept], scorer.metric) if kept.sum() > 1 else None,
           "baseline": f"raw-pixels ({profile.name} profile, cosine)",
           "baseline_scores": scores(pixels, labels, "cosine")}
    if row["acquired"] < len(images):  # the bundle ranked fewer images: the baseline on those too
        row["baseline_scores_acquired"] = scores(pixels[kept], labels[kept], "cosine") if kept.sum() > 1 else None
    return row


# -- speed ------------------------------------------------------------------------------------

def speed(bundle, sizes, repeats, seed, k=10):
    """Median and p95 ms per `nearest_templates` query at each catalogue size (synthetic unit vectors)."""
    from verifier.enrollment.gallery import Gallery
    from verifier.enrollment.store import open_store

    dim, metric, source = embedding_shape(bundle)
    rng = np.random.default_rng(seed)
    results = []
    with tempfile.TemporaryDirectory() as work:
        store = open_store(f"sqlite:///{Path(work) / 'search.db'}")
        filled = 0
        for size in sorted(sizes):
            filled = fill(store, size, 5, dim, rng, start=filled)
            gallery = Gallery(store, BUNDLE_ID, metric, "mean")
            gallery.snapshot()  # the load is paid once per worker, not per query
            probes = iter(rng.normal(size=(repeats, dim)).astype(np.float32))
            median, times = time_ms(lambda: gallery.nearest_templates(next(probes), k), repeats)
            results.append({"templates": size, "search_ms_median": round(median, 2),
                            "search_ms_p95": round(float(np.percentile(times, 95)), 2)})
        store.close()
    return {"dim": dim, "metric": metric, "source": source, "k": k, "results": results}


def _show(scored):
    if scored is None:
        return "no figures (fewer than 2 images acquired)"
    return (f"recall@1 {scored['recall@1']:.3f}, recall@5 {scored['recall@5']:.3f}, "
            f"mAP@R {scored['mAP@R']:.3f} ({scored['queries']} queries)")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", help=f"data set, repeatable (default: {', '.join(DATA)})")
    parser.add_argument("--bundle", action="append", required=True,
                        help="bundle directory: once for every data set, or once per --data in order")
    parser.add_argument("--per-class", type=int, default=50, help="images a class at most (seeded sample)")
    parser.add_argument("--baseline-profile", help="profile for the raw-pixel baseline (default: as "
                                                   "bench/accuracy.py picks for the data)")
    parser.add_argument("--no-detect", action="store_true", help="whole images into a face bundle's tower")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    data = args.data or list(DATA)
    if len(args.bundle) not in (1, len(data)):
        raise SystemExit(f"give --bundle once or once per --data ({len(data)}), not {len(args.bundle)} times")
    bundles = args.bundle * len(data) if len(args.bundle) == 1 else args.bundle
    quality_rows = []
    for spec, bundle in zip(data, bundles):
        row = quality(spec, bundle, args)
        quality_rows.append(row)
        print(f"{spec}: {row['classes']} held-out classes, {row['images']} images "
              f"(at most {args.per_class} a class); bundle {row['model']} ({row['acquired']} acquired, "
              f"{row['embed_ms_per_image']} ms an image): {_show(row['bundle_scores'])}")
        print(f"{'':>{len(spec) + 1}} {row['baseline']}: {_show(row['baseline_scores'])}")
        if "baseline_scores_acquired" in row:
            print(f"{'':>{len(spec) + 1}} {row['baseline']} on the acquired images only: "
                  f"{_show(row['baseline_scores_acquired'])}")
    timing = speed(bundles[0], args.sizes, args.repeats, args.seed)
    for result in timing["results"]:
        print(f"search over {result['templates']:>7} templates ({timing['dim']}-d {timing['metric']}, "
              f"k={timing['k']}): {result['search_ms_median']} ms median, p95 {result['search_ms_p95']} ms")
    print(json.dumps({"benchmark": "search", "per_class": args.per_class, "seed": args.seed,
                      "no_detect": args.no_detect, "quality": quality_rows, "speed": timing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
