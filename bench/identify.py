"""How fast is 1:N identify at 10,000 and 100,000 templates, and what does a change cost?

    python bench/identify.py [--bundle bundles/face] [--sizes 10000 100000] [--per-subject 5]

Synthetic, L2-normalised embeddings of the bundle's size (no model runs: the probe's
embedding costs the same whatever the gallery) are written into a fresh SQLite
store, then for each size it times, on this machine:

    reload    reading all the bundle's templates from the store into the per-worker matrix
              (paid by each worker on its next identify after a deletion or re-embed)
    append    merging one new enrollment (5 templates) into the cached matrix (paid by each
              worker on its next identify after an enrollment)
    identify  one search over the cached matrix: every subject's fused distance
              (matrix-vector product + segmented reduction), top 5, exact rescoring
    loop      the same answer by looping over subjects in Python (brute force per subject,
              the CompreFace-style baseline), timed on a sample of subjects and scaled

Past one machine's memory, or for many changes per second, keep the vectors in an engine
made for it: pgvector inside the same PostgreSQL (an HNSW or IVFFlat index per bundle id,
filtered by bundle_id; exact rescoring of its top candidates as here), or FAISS
(IndexFlatIP / IndexHNSWFlat, sharded per bundle) next to each worker. The last line is
one JSON object.

BLAS runs single-threaded here (OPENBLAS_NUM_THREADS=1 unless set), as it should in each
gunicorn worker: the workers already use every core, and a multi-threaded matrix-vector
product on busy shared cores is slower, not faster (README.md has the figure).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np

from verifier.core.bundle import read_meta
from verifier.core.errors import VerifierError
from verifier.core.fusion import fused_distances
from verifier.enrollment.gallery import Gallery
from verifier.enrollment.store import open_store
from verifier.enrollment.store.base import embedding_bytes, now
from verifier.settings import DEFAULT_BUNDLE

BUNDLE_ID = "bench"


def fill(store, n_templates, per_subject, dim, rng, start=0):
    """Append templates (per_subject per new subject) in one transaction; returns the new total."""
    created = now()
    with store.transaction(write=True) as tx:
        version = tx.one("UPDATE store_state SET version = version + 1 WHERE id = 1 RETURNING version")[0]
        for s in range(start // per_subject, n_templates // per_subject):
            subject = f"subject{s:07d}"
            tx.run("INSERT INTO subjects (id, metadata, created) VALUES (?, '{}', ?)", (subject, created))
            vectors = rng.normal(size=(per_subject, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for vector in vectors:
                tx.run("INSERT INTO templates (id, subject_id, bundle_id, embedding, created, added_version) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (uuid.uuid4().hex, subject, BUNDLE_ID,
                                                     embedding_bytes(vector), created, version))
    return n_templates


def time_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), times


def loop_ms(store, metric, rule, probe, sample=500):
    """A Python loop calling fused_distances subject by subject, timed on a sample and scaled."""
    subject_ids, _, templates = store.gallery(BUNDLE_ID)
    by_subject = {}
    for subject, row in zip(subject_ids, templates):
        by_subject.setdefault(subject, []).append(row)
    groups = [np.array(rows) for rows in list(by_subject.values())[:sample]]
    start = time.perf_counter()
    for rows in groups:
        fused_distances(probe[None, :], rows, metric, rule)
    return 1000 * (time.perf_counter() - start) * len(by_subject) / len(groups)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, help="read embedding size and metric from it")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--per-subject", type=int, default=5)
    parser.add_argument("--rule", default="mean", choices=("mean", "min", "centroid"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def embedding_shape(bundle):
    """(dimensions, metric, where they came from): the bundle's, or 64-d euclidean without one."""
    try:
        meta = read_meta(bundle)
        return int(meta["embedding_size"]), meta["metric"], f"bundle {meta['bundle_id']}"
    except VerifierError as exc:
        return 64, "euclidean", f"default size ({exc.message})"


def append_ms(store, gallery, size, per_subject, dim, rng):
    """Median milliseconds to merge one new enrollment into the cached matrix (5 enrollments timed)."""
    appends = []
    for k in range(5):
        vectors = rng.normal(size=(per_subject, dim)).astype(np.float32)
        store.add_templates(f"late{size}-{k}", BUNDLE_ID, vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                            create=True)
        start = time.perf_counter()
        gallery.snapshot()
        appends.append(1000 * (time.perf_counter() - start))
    return statistics.median(appends)


def measure_size(store, size, args, dim, metric, rng):
    """Reload, append, identify and Python-loop timings for a store holding `size` templates."""
    gallery = Gallery(store, BUNDLE_ID, metric, args.rule)  # a whole load, as after a deletion
    start = time.perf_counter()
    gallery.snapshot()
    reload_ms = 1000 * (time.perf_counter() - start)
    appended = append_ms(store, gallery, size, args.per_subject, dim, rng)
    probes = rng.normal(size=(args.repeats, dim)).astype(np.float32)
    probe_iter = iter(probes)
    median, times = time_ms(lambda: gallery.search(next(probe_iter), top_k=5), args.repeats)
    loop = loop_ms(store, metric, args.rule, probes[0])
    return {"templates": size, "subjects": size // args.per_subject, "reload_ms": round(reload_ms, 1),
            "append_ms": round(appended, 1),
            "identify_ms_median": round(median, 2), "identify_ms_p95": round(float(np.percentile(times, 95)), 2),
            "python_loop_ms": round(loop, 1),
            "matrix_mb": round(gallery.snapshot().templates.nbytes / 2**20, 1)}


def main(argv=None):
    args = build_parser().parse_args(argv)
    dim, metric, source = embedding_shape(args.bundle)
    print(f"embeddings: {dim} floats, {metric}, from {source}; fusion rule {args.rule}; "
          f"{args.per_subject} templates per subject")
    rng = np.random.default_rng(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as work:
        store = open_store(f"sqlite:///{Path(work) / 'bench.db'}")
        filled = 0
        for size in sorted(args.sizes):
            filled = fill(store, size, args.per_subject, dim, rng, start=filled)
            row = measure_size(store, size, args, dim, metric, rng)
            results.append(row)
            print(f"{size:>8} templates ({row['subjects']} subjects): identify {row['identify_ms_median']} ms "
                  f"median (p95 {row['identify_ms_p95']} ms); after an enrollment {row['append_ms']} ms, "
                  f"after a deletion {row['reload_ms']} ms (whole reload); "
                  f"matrix {row['matrix_mb']} MiB; per-subject Python loop ~{row['python_loop_ms']} ms")
        store.close()
    print("beyond one machine: pgvector in the same PostgreSQL (HNSW/IVFFlat per bundle id) or FAISS; "
          "this matrix holds ~10^7 64-float templates in 2.5 GiB per worker")
    print(json.dumps({"benchmark": "identify", "dim": dim, "metric": metric, "rule": args.rule,
                      "per_subject": args.per_subject, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
