"""1:N search over one bundle's templates: a matrix cached per worker, refreshed from the store.

Each search first reads the store's change counters (one cheap query). When templates
were only added since the matrix was built, just the new rows are fetched and appended;
after a deletion or a re-embed the matrix is reloaded whole. Either way an enrollment or
a deletion made by any worker on any machine is seen by the next search everywhere.
Nothing that another worker needs lives only here.

The search is two steps: every subject's fused distance in float32 with one matrix-vector
product and a per-subject reduction (`np.bincount` for the mean, `np.minimum.at` for the
minimum, or one row per subject for the centroid), then the best candidates are rescored
exactly with `verifier.core.fusion.fused_distances` on their rows in the store's order, so the
distances reported are the very numbers a 1:1 subject verify gives.

`nearest_templates` is the same search over single images instead of subjects (the
catalogue search of POST /v1/search): every row's distance in float32 from the same cached
keys, then the best rows rescored exactly as a 1:1 pair verify scores them; each row
keeps its template id.

Past what one worker's memory holds (about 10^7 templates of 64 floats in 2.5 GiB), use an
engine built for it (pgvector in the same PostgreSQL, or FAISS), not a home-made index.
"""

import threading
from dataclasses import dataclass

import numpy as np

from verifier.core.distances import get_metric, pair_distances
from verifier.core.fusion import RULES, fused_distances

RESCORE_EXTRA = 16  # candidates rescored beyond top_k, against float32 rounding in the ranking


@dataclass(frozen=True)
class _Snapshot:
    """The gallery at one store state; immutable (a refresh builds a new one)."""

    version: int
    removals: int
    subjects: list  # subject id per code
    index: dict  # code per subject id
    row_subject: np.ndarray  # (M,) code of each row; a subject's rows are in the store's order
    counts: np.ndarray  # (S,) rows per code
    templates: np.ndarray  # (M, D) float32
    template_ids: np.ndarray  # (M,) the store's id of each row (object array of str)
    sums: np.ndarray  # (S, D) float64 per-subject sums (centroid rule), else None
    keys: np.ndarray  # what the probe is compared with: rows (mean, min) or centroids
    key_norms: np.ndarray  # squared norms of `keys`


class Gallery:
    """The templates of one bundle (and, given one, of one modality's subjects), searchable by fused
    distance with one fusion rule."""

    def __init__(self, store, bundle_id, metric, rule, *, modality=None, default_modality=None):
        if rule not in RULES:
            raise ValueError(f"unknown fusion rule {rule!r}; known: {', '.join(RULES)}")
        self.store = store
        self.bundle_id = bundle_id
        self.modality = modality
        self.default_modality = default_modality
        self.metric = metric
        self.distance = get_metric(metric)
        self.rule = rule
        self._snapshot = None
        self._lock = threading.Lock()
        self.reloads = 0  # whole loads
        self.appends = 0  # incremental refreshes

    def _which(self):
        """The store's modality filter for this gallery (none without a modality)."""
        if self.modality is None:
            return {}
        return {"modality": self.modality, "default_modality": self.default_modality}

    def _keys(self, rows):
        """Comparison keys for rows or centroids, as the metric compares them (float32)."""
        return np.ascontiguousarray(self.distance.prepare(np.asarray(rows, dtype=np.float32)), dtype=np.float32)

    def _snap(self, version, removals, index, row_subject, templates, template_ids, sums, keys, key_norms):
        """A snapshot; for the centroid rule the keys are (re)made from the per-subject sums."""
        counts = np.bincount(row_subject, minlength=len(index))
        if self.rule == "centroid":
            keys = self._keys(sums / np.maximum(counts, 1)[:, None])
            key_norms = (keys * keys).sum(axis=1)
        return _Snapshot(version, removals, list(index), index, row_subject, counts, templates, template_ids, sums,
                         keys, key_norms)

    @staticmethod
    def _codes(subject_ids, index):
        """Codes for `subject_ids`, and a copy of `index` (subject -> code) with unseen subjects added."""
        index = dict(index)
        codes = np.fromiter((index.setdefault(s, len(index)) for s in subject_ids), np.int64, len(subject_ids))
        return codes, index

    def _row_keys(self, rows, always=False):
        """(keys, squared norms) of template rows; unused (None) under the centroid rule unless `always`."""
        if self.rule == "centroid" and not always:
            return None, None
        keys = self._keys(rows)
        return keys, (keys * keys).sum(axis=1)

    def _sums(self, codes, rows, count, base=None):
        """Per-subject float64 sums of the rows (centroid rule only), added onto `base`."""
        if self.rule != "centroid":
            return None
        sums = np.zeros((count, rows.shape[1]))
        if base is not None:
            sums[:len(base)] = base
        np.add.at(sums, codes, rows.astype(np.float64))
        return sums

    def _load(self, version, removals):
        """Every row written up to `version` (later rows are fetched by the next refresh)."""
        subject_ids, template_ids, templates = self.store.gallery(self.bundle_id, upto=version, **self._which())
        codes, index = self._codes(subject_ids, {})
        templates = np.ascontiguousarray(templates, dtype=np.float32)
        return self._snap(version, removals, index, codes, templates, np.array(template_ids, dtype=object),
                          self._sums(codes, templates, len(index)), *self._row_keys(templates))

    def _append(self, snap, version):
        """The cached rows plus those written in (snap.version, version]; no removal happened."""
        subject_ids, template_ids, new = self.store.gallery(self.bundle_id, after=snap.version, upto=version,
                                                            **self._which())
        if not subject_ids:
            return self._snap(version, snap.removals, snap.index, snap.row_subject, snap.templates,
                              snap.template_ids, snap.sums, snap.keys, snap.key_norms)
        if not len(snap.templates):
            return self._load(version, snap.removals)
        codes, index = self._codes(subject_ids, snap.index)
        new = np.asarray(new, dtype=np.float32)
        keys, norms = self._row_keys(new)
        if keys is not None:
            keys, norms = np.concatenate([snap.keys, keys]), np.concatenate([snap.key_norms, norms])
        return self._snap(version, snap.removals, index, np.concatenate([snap.row_subject, codes]),
                          np.concatenate([snap.templates, new]),
                          np.concatenate([snap.template_ids, np.array(template_ids, dtype=object)]),
                          self._sums(codes, new, len(index), snap.sums), keys, norms)

    def snapshot(self):
        """The current snapshot, brought up to the store's state first when it has moved."""
        version, removals = self.store.state()
        snap = self._snapshot
        if snap is not None and snap.version == version and snap.removals == removals:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.removals != removals or snap.version > version:
                self._snapshot = self._load(version, removals)
                self.reloads += 1
            elif snap.version < version:
                self._snapshot = self._append(snap, version)
                self.appends += 1
            return self._snapshot

    def _coarse(self, snap, probe):
        """Every subject's fused distance to `probe`, in float32."""
        p = self._keys(probe[None, :])[0]
        d = self.distance.from_inner(snap.keys @ p, snap.key_norms, float(p @ p))
        if self.rule == "centroid":
            return d
        if self.rule == "min":
            out = np.full(len(snap.subjects), np.inf)
            np.minimum.at(out, snap.row_subject, d)
            return out
        return np.bincount(snap.row_subject, weights=d, minlength=len(snap.subjects)) / snap.counts

    def search(self, probe, top_k=5):
        """The `top_k` nearest subjects as [(subject id, fused distance, templates)], nearest first."""
        snap = self.snapshot()
        if not snap.subjects:
            return []
        probe = np.asarray(probe, dtype=np.float32).reshape(-1)
        coarse = self._coarse(snap, probe)
        n = min(len(coarse), top_k + RESCORE_EXTRA)
        shortlist = np.argpartition(coarse, n - 1)[:n] if n < len(coarse) else np.arange(len(coarse))
        rows = np.flatnonzero(np.isin(snap.row_subject, shortlist))  # ascending: the store's order
        exact = []
        for code in shortlist:
            mine = rows[snap.row_subject[rows] == code]
            distance = float(fused_distances(probe[None, :], snap.templates[mine], self.metric, self.rule)[0])
            exact.append((distance, snap.subjects[code], int(snap.counts[code])))
        exact.sort()
        return [(subject, distance, count) for distance, subject, count in exact[:top_k]]

    def _nearest_rows(self, snap, probe, k):
        """(rows, exact distances) of the `k` template rows nearest `probe`, nearest first (ties: row order)."""
        keys, norms = (snap.keys, snap.key_norms) if self.rule != "centroid" else \
            self._row_keys(snap.templates, always=True)  # centroid keys are per subject: rows' made here
        p = self._keys(probe[None, :])[0]
        coarse = self.distance.from_inner(keys @ p, norms, float(p @ p))
        n = min(len(coarse), k + RESCORE_EXTRA)
        shortlist = np.argpartition(coarse, n - 1)[:n] if n < len(coarse) else np.arange(len(coarse))
        exact = pair_distances(np.broadcast_to(probe, (n, len(probe))), snap.templates[shortlist], self.metric)
        order = np.lexsort((shortlist, exact))[:k]
        return shortlist[order], exact[order]

    def nearest_templates(self, probe, k=10):
        """The `k` templates nearest `probe`: ([(subject id, template id, distance)] nearest first, snapshot).

        Distances are those of a 1:1 pair verify of the probe against that one image
        (`pair_distances`, float64), whatever the fusion rule.
        """
        probe = np.asarray(probe, dtype=np.float32).reshape(-1)
        snap = self.snapshot()
        if not len(snap.templates):
            return [], snap
        rows, distances = self._nearest_rows(snap, probe, k)
        return [(snap.subjects[snap.row_subject[row]], snap.template_ids[row], float(d))
                for row, d in zip(rows, distances)], snap
