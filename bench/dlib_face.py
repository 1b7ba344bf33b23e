"""dlib's face pipeline, as face_recognition runs it: the anchor our face pipeline must beat.

    python bench/dlib_face.py --data orl
    python bench/dlib_face.py --data ../shared/data/lfw-dev --pairs 1000 --border 30

The pipeline: dlib's HOG frontal face detector on the image upsampled `upsample` times
(face_recognition's default is 1; the issue measured 2), the largest face found, its
5-point landmarks, the aligned 150x150 chip and dlib's ResNet 128-d descriptor
(`compute_face_descriptor`), compared with the euclidean distance. face_recognition
itself needs a dlib source build, so this calls dlib directly with the model files of
`face_recognition_models`. Both are benchmark dependencies (requirements-bench.txt), not
runtime ones.

`--data orl` runs the open-set protocol of bench/accuracy.py: fold f holds out identities
f*10+1 .. f*10+10. dlib fits nothing, so each fold only scores its held-out people: all
genuine and all impostor pairs. `--data PATH` (a folder such as lfw-dev, where many people
have one image) scores a seeded sample of `--pairs` genuine and `--pairs` impostor pairs
among all people instead, and embeds only the images those pairs use.

An image where no face is found has no descriptor: every pair that uses it is a failure
to acquire, counted separately and excluded from the EER. The last line is JSON.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from calibration.metrics import auc, eer
from calibration.pairs import pair_comparisons
from imagesets import load_dataset
from verifier.core.distances import pair_distances

DIMENSIONS = 128
METRIC = "euclidean"


def available():
    """True when dlib and the face_recognition_models files can be loaded."""
    try:
        import dlib  # noqa: F401
        import face_recognition_models as models
    except ImportError:
        return False
    return all(Path(path).is_file() for path in (models.pose_predictor_five_point_model_location(),
                                                 models.face_recognition_model_location()))


def _to_rgb(image):
    """uint8 HxW, HxWx1 or HxWx3 -> contiguous HxWx3 RGB, the input dlib's descriptor needs."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a greyscale or RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image)


class DlibFacePipeline:
    """Detect, align and describe faces with dlib (face_recognition's HOG pipeline).

    upsample: times the HOG detector upsamples the image (each doubles it) before it looks
        for faces; 2 finds the small faces of 90-112 px images that 1 misses.
    border: pixels of replicated border added on every side before detection, for tight
        crops whose face reaches the image edge (what it changes on lfw-dev: README.md).
    jitter: dlib's num_jitters; above 1 it averages the descriptors of that many randomly
        jittered chips (1 and 0 both mean none).
    """

    def __init__(self, upsample=2, border=0, jitter=0):
        import dlib
        import face_recognition_models as models

        self.upsample, self.border, self.jitter = upsample, border, jitter
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._describer = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def embed_one(self, image):
        """One image -> its largest face's 128-d descriptor (float32), or None when no face is found."""
        rgb = _to_rgb(image)
        if self.border:
            rgb = np.pad(rgb, ((self.border, self.border), (self.border, self.border), (0, 0)), mode="edge")
        faces = self._detector(rgb, self.upsample)
        if not faces:
            return None
        shape = self._landmarks(rgb, max(faces, key=lambda face: face.area()))
        return np.array(self._describer.compute_face_descriptor(rgb, shape, self.jitter), dtype=np.float32)

    def embed(self, images):
        """Images -> (embeddings float32 (N, 128), found bool (N,)); a zero row where no face is found."""
        embeddings = np.zeros((len(images), DIMENSIONS), np.float32)
        found = np.zeros(len(images), bool)
        for row, image in enumerate(images):
            vector = self.embed_one(image)
            if vector is not None:
                embeddings[row], found[row] = vector, True
        return embeddings, found


def time_verification(image_a, image_b, repeats=50, pipeline=None):
    """Median milliseconds of one verification: detect and embed both images, then their distance.

    dlib-bin links no BLAS and its detector, landmarks and ResNet run on the calling thread
    (CPU time equals wall time), so this is a one-thread figure, to set beside the serving
    benchmark's own.
    """
    pipeline = pipeline or DlibFacePipeline()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a, b = pipeline.embed_one(image_a), pipeline.embed_one(image_b)
        if a is not None and b is not None:
            pair_distances(a[None], b[None], METRIC)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def pair_counts(labels):
    """(genuine, impostor) pairs that all images of these labels make."""
    sizes = np.bincount(np.asarray(labels))
    genuine = int((sizes * (sizes - 1) // 2).sum())
    return genuine, len(labels) * (len(labels) - 1) // 2 - genuine


def summarise(genuine, impostor, missed_genuine, missed_impostor):
    """EER, its operating point with counts, AUC, and the pairs lost to failures to acquire."""
    result = eer(genuine, impostor)
    point = next(p for p in result.bracket if p.threshold == result.threshold)
    return {"eer": result.value, "threshold": result.threshold, "auc": auc(genuine, impostor),
            "false_matches": point.fmr.errors, "impostor": point.fmr.total,
            "false_non_matches": point.fnmr.errors, "genuine": point.fnmr.total,
            "fta_genuine": missed_genuine, "fta_impostor": missed_impostor}


def describe(result):
    """One printed line for a summarise() result."""
    return (f"EER {100 * result['eer']:.2f}% (FMR {result['false_matches']}/{result['impostor']}, "
            f"FNMR {result['false_non_matches']}/{result['genuine']})  AUC {result['auc']:.4f}  "
            f"failure to acquire: {result['fta_genuine']} genuine + {result['fta_impostor']} impostor pairs")


def score_identities(embeddings, found, labels):
    """All genuine and impostor pairs among found images; pairs with a missing face counted apart."""
    keep = np.flatnonzero(found)
    pairs = pair_comparisons(embeddings[keep], labels[keep], np.zeros(len(keep), bool), METRIC)
    all_genuine, all_impostor = pair_counts(labels)
    return summarise(pairs.genuine, pairs.impostor,
                     all_genuine - len(pairs.genuine), all_impostor - len(pairs.impostor))


def run_folds(data, embeddings, found, folds, per_fold):
    """bench/accuracy.py's open-set folds: score each fold's held-out identities (dlib fits nothing)."""
    results = {}
    for fold in range(1, folds + 1):
        held = data.identities[(fold - 1) * per_fold:fold * per_fold]
        rows = np.flatnonzero(np.isin(data.labels, [data.identities.index(name) for name in held]))
        results[str(fold)] = score_identities(embeddings[rows], found[rows], data.labels[rows])
        print(f"fold {fold} ({held[0]}..{held[-1]})  {describe(results[str(fold)])}", flush=True)
    return results


def sample_pairs(labels, n, seed):
    """A seeded sample of `n` distinct genuine and `n` distinct impostor pairs: (first, second, label).

    Genuine: a person drawn uniformly among those with 2+ images, then two of their images,
    so that people with hundreds of images do not make most of the genuine pairs.
    Impostor: two images drawn uniformly among all images, of different people.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_person = [np.flatnonzero(labels == person) for person in np.unique(labels)]
    multi = [rows for rows in by_person if len(rows) >= 2]
    if sum(len(rows) * (len(rows) - 1) // 2 for rows in multi) < n:
        raise SystemExit(f"{len(multi)} people with 2+ images cannot make {n} distinct genuine pairs")
    genuine, impostor = set(), set()
    while len(genuine) < n:
        genuine.add(tuple(sorted(rng.choice(multi[rng.integers(len(multi))], 2, replace=False))))
    while len(impostor) < n:
        a, b = sorted(rng.choice(len(labels), 2, replace=False))
        if labels[a] != labels[b]:
            impostor.add((a, b))
    pairs = np.array(sorted(genuine) + sorted(impostor), dtype=np.int64)
    return pairs[:, 0], pairs[:, 1], np.repeat([1, 0], n)


def score_pairs(embeddings, found, first, second, label):
    """Distances of the sampled pairs whose two faces were found; the others counted apart."""
    both = found[first] & found[second]
    distance = pair_distances(embeddings[first[both]], embeddings[second[both]], METRIC)
    kept = label[both]
    return summarise(distance[kept == 1], distance[kept == 0],
                     int(((label == 1) & ~both).sum()), int(((label == 0) & ~both).sum()))


def embed_timed(pipeline, images):
    """embed() plus the wall-clock milliseconds per image it took."""
    start = time.perf_counter()
    embeddings, found = pipeline.embed(images)
    return embeddings, found, 1000 * (time.perf_counter() - start) / max(len(images), 1)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="orl", help="orl (open-set folds) or a folder PATH/<identity>/<images>")
    p.add_argument("--folds", type=int, default=4, help="orl: folds of held-out identities")
    p.add_argument("--per-fold", type=int, default=10, help="orl: identities held out per fold")
    p.add_argument("--pairs", type=int, default=1000, help="folder: genuine and impostor pairs to sample, each")
    p.add_argument("--seed", type=int, default=0, help="folder: pair sample seed")
    p.add_argument("--upsample", type=int, default=2, help="HOG detector upsampling (face_recognition's default: 1)")
    p.add_argument("--border", type=int, default=0, help="replicated border in px added before detection")
    p.add_argument("--jitter", type=int, default=0, help="dlib num_jitters (0 or 1: none)")
    p.add_argument("--repeats", type=int, default=50, help="repeats of the timed verification")
    return p


def run_orl(data, pipeline, args):
    """Embed every image, score the open-set folds; returns (found, ms per image, report fields)."""
    embeddings, found, ms = embed_timed(pipeline, data.images)
    folds = run_folds(data, embeddings, found, args.folds, args.per_fold)
    mean = float(np.mean([r["eer"] for r in folds.values()]))
    per_fold = " / ".join(f"{100 * r['eer']:.2f}" for r in folds.values())
    print(f"mean EER {100 * mean:.2f}%  ({per_fold})")
    return found, ms, {"per_fold": args.per_fold, "mean_eer": mean, "folds": folds}


def run_sampled(data, pipeline, args):
    """Embed the images a seeded pair sample uses and score those pairs; returns as `run_orl`."""
    first, second, label = sample_pairs(data.labels, args.pairs, args.seed)
    used = np.unique(np.concatenate([first, second]))  # embed only the images the pairs use
    embeddings, found, ms = embed_timed(pipeline, [data.images[i] for i in used])
    result = score_pairs(embeddings, found, np.searchsorted(used, first), np.searchsorted(used, second), label)
    print(f"{args.pairs} + {args.pairs} sampled pairs (seed {args.seed})  {describe(result)}")
    return found, ms, {"pairs": args.pairs, "seed": args.seed, **result}


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not available():
        raise SystemExit("dlib or face_recognition_models missing: pip install -r requirements-bench.txt")
    data = load_dataset(args.data, strict=True)
    pipeline = DlibFacePipeline(args.upsample, args.border, args.jitter)
    settings = {"upsample": args.upsample, "border": args.border, "jitter": args.jitter}
    print(f"{data.name}: {len(data.identities)} identities, {len(data)} images; dlib {settings}")
    report = {"data": data.name, "fingerprint": data.fingerprint, "settings": settings}
    if args.data == "orl":
        found, ms, scored = run_orl(data, pipeline, args)
    else:
        found, ms, scored = run_sampled(data, pipeline, args)
    report.update(scored)
    verification_ms = time_verification(data.images[0], data.images[1], args.repeats, pipeline)
    print(f"images {len(found)}, no face found in {int((~found).sum())}; {ms:.1f} ms per image; "
          f"one verification (images 0 and 1, detect + embed both) {verification_ms:.1f} ms median "
          f"of {args.repeats}, one thread")
    report.update(images=len(found), no_face=int((~found).sum()), ms_per_image=round(ms, 2),
                  verification_ms=round(verification_ms, 2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
