"""The comparison protocol: which genuine and impostor comparisons a calibration scores.

Pair protocol: every genuine pair among the identities' genuine images, and every
impostor pair between different identities (or a seeded uniform sample of them when
`max_impostors` is set). Signature folders add skilled forgeries: each forgery against
each genuine image of the writer it imitates is an impostor comparison.

Template protocol: each identity enrolls `k` of its images (a seeded choice); every other
image probes its own subject (genuine) and every other subject (impostor), scored with a
fusion rule from `verifier.core.fusion`. It calibrates subject verification the same way.
"""

from dataclasses import dataclass

import numpy as np

from verifier.core.distances import pair_distances
from verifier.core.fusion import fused_distances

# Which impostor comparisons a threshold is chosen on: all of them, only skilled forgeries
# of the claimed writer, or only random forgeries (another identity's genuine image).
IMPOSTOR_KINDS = ("all", "skilled", "random")


@dataclass
class Comparisons:
    """Scored comparisons: distance, label (1 genuine, 0 impostor) and the identities involved."""

    distance: np.ndarray
    label: np.ndarray
    id_a: np.ndarray
    id_b: np.ndarray
    forgery: np.ndarray  # impostor comparisons made with a skilled forgery
    sampled_from: int  # impostor comparisons available before any sampling

    @property
    def genuine(self):
        return self.distance[self.label == 1]

    @property
    def impostor(self):
        return self.distance[self.label == 0]

    def __len__(self):
        return len(self.distance)

    def with_impostors(self, kind):
        """The genuine comparisons and only the impostors of `kind` (one of IMPOSTOR_KINDS)."""
        if kind == "all":
            return self
        if kind not in IMPOSTOR_KINDS:
            raise ValueError(f"unknown impostor kind {kind!r}; known: {', '.join(IMPOSTOR_KINDS)}")
        other = self.forgery if kind == "random" else (self.label == 0) & ~self.forgery
        keep = ~other
        return Comparisons(self.distance[keep], self.label[keep], self.id_a[keep], self.id_b[keep],
                           self.forgery[keep], int((self.label[keep] == 0).sum()))

    def restrict(self, identities):
        """Only comparisons whose identities all lie in `identities` (for dev/eval splits)."""
        keep = np.isin(self.id_a, list(identities)) & np.isin(self.id_b, list(identities))
        return Comparisons(self.distance[keep], self.label[keep], self.id_a[keep], self.id_b[keep],
                           self.forgery[keep], self.sampled_from)


def _upper_pairs(n):
    i, j = np.triu_indices(n, k=1)
    return i, j


def pair_comparisons(embeddings, labels, forged, metric, *, max_impostors=None, seed=0):
    """All genuine pairs and all (or a seeded sample of) impostor pairs, scored with `metric`."""
    labels = np.asarray(labels)
    forged = np.asarray(forged, dtype=bool)
    real = np.flatnonzero(~forged)
    i, j = _upper_pairs(len(real))
    a, b = real[i], real[j]
    same = labels[a] == labels[b]
    imp_a, imp_b = a[~same], b[~same]
    available = len(imp_a)
    if max_impostors is not None and available > max_impostors:
        pick = np.sort(np.random.default_rng(seed).choice(available, size=max_impostors, replace=False))
        imp_a, imp_b = imp_a[pick], imp_b[pick]
    fake = np.flatnonzero(forged)
    forge_a, forge_b = [], []
    for f in fake:  # a forgery against each genuine image of the writer it imitates
        targets = real[labels[real] == labels[f]]
        forge_a.extend(targets)
        forge_b.extend([f] * len(targets))
    first = np.concatenate([a[same], imp_a, np.array(forge_a, dtype=np.int64)])
    second = np.concatenate([b[same], imp_b, np.array(forge_b, dtype=np.int64)])
    label = np.concatenate([np.ones(same.sum(), np.int8), np.zeros(len(imp_a) + len(forge_a), np.int8)])
    forgery = np.concatenate([np.zeros(same.sum() + len(imp_a), bool), np.ones(len(forge_a), bool)])
    distance = chunked_pair_distances(embeddings, first, second, metric)
    return Comparisons(distance, label, labels[first], labels[second], forgery, available + len(forge_a))


def chunked_pair_distances(embeddings, first, second, metric, budget=1 << 24):
    """pair_distances of rows first[i] and second[i], a chunk at a time: the rows gathered at once
    hold at most `budget` values, so raw-pixel vectors of photos do not need memory per pair."""
    embeddings = np.asarray(embeddings)
    width = int(np.prod(embeddings.shape[1:])) or 1
    step = max(1, budget // width)
    return np.concatenate([pair_distances(embeddings[first[k:k + step]], embeddings[second[k:k + step]], metric)
                           for k in range(0, len(first), step)] or [np.zeros(0)])


def enrollment_split(labels, forged, k, seed=0):
    """Seeded choice of `k` genuine images per identity to enroll; the rest are probes.

    Returns (enrolled indices per identity as a dict, probe indices). Identities with
    fewer than k + 1 genuine images cannot be both enrolled and probed and are left out.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    enrolled, probes = {}, []
    for identity in np.unique(labels):
        own = np.flatnonzero((labels == identity) & ~np.asarray(forged, dtype=bool))
        if len(own) <= k:
            continue
        chosen = np.sort(rng.choice(own, size=k, replace=False))
        enrolled[int(identity)] = chosen
        probes.extend(sorted(set(own) - set(chosen)))
    return enrolled, np.array(probes, dtype=np.int64)


def template_comparisons(embeddings, labels, forged, metric, *, k, rule, seed=0):
    """Each probe against every enrolled subject's templates, fused with `rule`.

    Identities with more than k genuine images are enrolled and probe with the rest; the genuine
    images of those with fewer (most people of a photo collection in the wild) probe every
    subject as impostors.
    """
    labels = np.asarray(labels)
    enrolled, probes = enrollment_split(labels, forged, k, seed)
    forged = np.asarray(forged, dtype=bool)
    forgeries = np.flatnonzero(forged)
    unenrolled = np.flatnonzero(~forged & ~np.isin(labels, list(enrolled)))
    probe_rows = np.sort(np.concatenate([probes, unenrolled]))
    distance, label, id_a, id_b, forgery = [], [], [], [], []
    for subject, templates in enrolled.items():
        fake_rows = forgeries[labels[forgeries] == subject]
        rows = np.concatenate([probe_rows, fake_rows])
        distance.append(fused_distances(embeddings[rows], embeddings[templates], metric, rule))
        is_forgery = np.concatenate([np.zeros(len(probe_rows), bool), np.ones(len(fake_rows), bool)])
        label.append(((labels[rows] == subject) & ~is_forgery).astype(np.int8))
        id_a.append(labels[rows])
        id_b.append(np.full(len(rows), subject))
        forgery.append(is_forgery)
    if not distance:
        raise ValueError(f"no identity has more than {k} genuine images: cannot enroll {k} and probe the rest")
    result = Comparisons(*(np.concatenate(x) for x in (distance, label, id_a, id_b, forgery)), sampled_from=0)
    result.sampled_from = int((result.label == 0).sum())
    return result
