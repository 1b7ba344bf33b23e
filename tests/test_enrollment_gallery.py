"""The vectorised 1:N search gives exactly the fused distances of a 1:1 subject verify."""

import numpy as np
import pytest

from verifier.core.fusion import fused_distances
from verifier.enrollment.gallery import Gallery


class MemoryStore:
    """The two store calls a Gallery makes, over in-memory (subject, embedding, version) rows."""

    def __init__(self, rows):
        self.rows = [(subject, vector, 0) for subject, vector in rows]
        self.version = 0
        self.removals = 0

    def add(self, subject, vector):
        self.version += 1
        self.rows.append((subject, vector, self.version))

    def remove(self, subject):
        self.version += 1
        self.removals += 1
        self.rows = [row for row in self.rows if row[0] != subject]

    def state(self):
        return self.version, self.removals

    def gallery(self, bundle_id, after=-1, upto=None):
        rows = sorted((r for r in self.rows if after < r[2] <= (upto if upto is not None else 1 << 62)),
                      key=lambda r: (r[0], r[2]))
        matrix = np.array([r[1] for r in rows], np.float32) if rows else np.zeros((0, 0), np.float32)
        return [r[0] for r in rows], [f"t{r[2]}" for r in rows], matrix


def random_rows(n_subjects, seed=0, dim=6):
    rng = np.random.default_rng(seed)
    return [(f"s{i:03d}", rng.normal(size=dim).astype(np.float32))
            for i in range(n_subjects) for _ in range(rng.integers(1, 5))]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("rule", ["mean", "min", "centroid"])
def test_search_equals_brute_force_fusion(metric, rule):
    rows = random_rows(60, seed=1)
    gallery = Gallery(MemoryStore(rows), "B", metric, rule)
    probe = np.random.default_rng(2).normal(size=6).astype(np.float32)
    by_subject = {}
    for subject, vector in rows:
        by_subject.setdefault(subject, []).append(vector)
    brute = sorted((float(fused_distances(probe[None], np.array(v), metric, rule)[0]), s)
                   for s, v in by_subject.items())
    hits = gallery.search(probe, top_k=10)
    assert [s for s, _, _ in hits] == [s for _, s in brute[:10]]
    assert [d for _, d, _ in hits] == [d for d, _ in brute[:10]]  # exact, not approximately
    assert hits[0][2] == len(by_subject[hits[0][0]])


def brute_force(rows, probe, metric, rule):
    by_subject = {}
    for subject, vector in rows:
        by_subject.setdefault(subject, []).append(vector)
    return sorted((float(fused_distances(probe[None], np.array(v), metric, rule)[0]), s)
                  for s, v in by_subject.items())


@pytest.mark.parametrize("rule", ["mean", "min", "centroid"])
def test_additions_are_merged_and_removals_reload(rule):
    rows = random_rows(30, seed=4)
    store = MemoryStore(rows)
    gallery = Gallery(store, "B", "euclidean", rule)
    probe = np.zeros(6, np.float32)
    gallery.search(probe)
    gallery.search(probe)
    assert (gallery.reloads, gallery.appends) == (1, 0)  # unchanged store: the cached matrix is reused
    extra = [("s003", np.full(6, 0.01, np.float32)), ("new", np.full(6, 0.02, np.float32))]
    for subject, vector in extra:
        store.add(subject, vector)
    hits = gallery.search(probe, top_k=40)
    assert (gallery.reloads, gallery.appends) == (1, 1)
    assert [(s, d) for s, d, _ in hits] == [(s, d) for d, s in brute_force(rows + extra, probe, "euclidean", rule)]
    store.remove("new")
    hits = gallery.search(probe, top_k=40)
    assert gallery.reloads == 2 and "new" not in [s for s, _, _ in hits]


def test_empty_gallery_and_unknown_rule():
    assert Gallery(MemoryStore([]), "B", "euclidean", "min").search(np.zeros(6)) == []
    with pytest.raises(ValueError):
        Gallery(MemoryStore([]), "B", "euclidean", "median")
