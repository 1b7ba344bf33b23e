"""Batch samplers: which images go into each training batch.

Each batch is a pure function of (seed, step), so training resumed from a checkpoint
at step s sees exactly the batches an uninterrupted run would have seen.
"""

import numpy as np


class PKSampler:
    """P identities x K images per batch, laid out identity-major (for in-batch mining)."""

    def __init__(self, labels, p, k, seed):
        labels = np.asarray(labels)
        self.classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if len(self.classes) < 2:
            raise ValueError("PK sampling needs at least 2 identities")
        self.p = min(p, len(self.classes))
        self.k = k
        self.seed = seed
        short = [i for i, members in enumerate(self.classes) if len(members) < k]
        if short:
            raise ValueError(f"{len(short)} identities have fewer than K={k} images")

    @property
    def batch_size(self):
        return self.p * self.k

    def batch(self, step):
        """Indices of batch `step`: P distinct identities, K distinct images of each."""
        rng = np.random.default_rng([self.seed, 2, step])
        chosen = rng.choice(len(self.classes), size=self.p, replace=False)
        return np.concatenate([rng.choice(self.classes[c], size=self.k, replace=False) for c in chosen])


class PairSampler:
    """Balanced pairs for the contrastive loss: half genuine, half impostor.

    A batch is 2 * n_pairs indices: the first n_pairs are the `a` images and the second
    n_pairs the `b` images; `similar` is 1 for the genuine half (same identity).
    """

    def __init__(self, labels, n_pairs, seed):
        labels = np.asarray(labels)
        self.classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if len(self.classes) < 2:
            raise ValueError("pair sampling needs at least 2 identities")
        if min(len(members) for members in self.classes) < 2:
            raise ValueError("pair sampling needs at least 2 images per identity")
        self.n_pairs = n_pairs
        self.seed = seed

    @property
    def batch_size(self):
        return 2 * self.n_pairs

    def similar(self):
        """The fixed label vector of every batch: 1 = genuine (similar), 0 = impostor."""
        n_genuine = self.n_pairs // 2
        return np.r_[np.ones(n_genuine), np.zeros(self.n_pairs - n_genuine)].astype(np.float32)

    def batch(self, step):
        rng = np.random.default_rng([self.seed, 3, step])
        n_genuine = self.n_pairs // 2
        a, b = [], []
        for c in rng.integers(len(self.classes), size=n_genuine):
            i, j = rng.choice(self.classes[c], size=2, replace=False)
            a.append(i)
            b.append(j)
        for _ in range(self.n_pairs - n_genuine):
            c1, c2 = rng.choice(len(self.classes), size=2, replace=False)
            a.append(rng.choice(self.classes[c1]))
            b.append(rng.choice(self.classes[c2]))
        return np.array(a + b, dtype=np.int64)
