"""Verification figures over all pairs of a labelled set: exact EER (with counts) and AUC.

A pair is accepted as genuine when its distance is <= the threshold. FMR = impostor
pairs accepted / impostor pairs, FNMR = genuine pairs rejected / genuine pairs
(ISO/IEC 19795-1). The EER is exact: both rates are evaluated at every distinct
distance, and the crossing point is found by linear interpolation between the two
neighbouring thresholds where FMR - FNMR changes sign.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from verifier.distances import cross_distances


@dataclass(frozen=True)
class EER:
    eer: float
    threshold: float
    false_matches: int  # impostor pairs accepted at the nearest real threshold
    false_non_matches: int  # genuine pairs rejected there
    impostor: int
    genuine: int

    def describe(self):
        return (f"{100 * self.eer:.2f}% (FMR {self.false_matches}/{self.impostor}, "
                f"FNMR {self.false_non_matches}/{self.genuine})")


def all_pairs(embeddings, labels, metric, forged=None):
    """(genuine distances, impostor distances) over every unordered pair of images.

    With `forged` (signatures), a forgery is never a genuine sample: forgery-vs-genuine
    pairs of the same writer are impostor pairs, forgery-vs-forgery pairs are skipped.
    """
    labels = np.asarray(labels)
    forged = np.zeros(len(labels), bool) if forged is None else np.asarray(forged, bool)
    d = cross_distances(embeddings, embeddings, metric)
    i, j = np.triu_indices(len(labels), k=1)
    both_forged = forged[i] & forged[j]
    same = (labels[i] == labels[j]) & ~forged[i] & ~forged[j]
    return d[i, j][same], d[i, j][~same & ~both_forged]


def exact_eer(genuine, impostor):
    """Exact EER of genuine / impostor distances (smaller = more alike)."""
    genuine = np.sort(np.asarray(genuine, dtype=np.float64))
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("an EER needs at least one genuine and one impostor pair")
    thresholds = np.unique(np.r_[genuine, impostor])
    fmr = np.searchsorted(impostor, thresholds, side="right") / len(impostor)
    fnmr = 1.0 - np.searchsorted(genuine, thresholds, side="right") / len(genuine)
    thresholds = np.r_[thresholds[0] - 1e-9, thresholds]  # a threshold that accepts nothing
    fmr, fnmr = np.r_[0.0, fmr], np.r_[1.0, fnmr]
    diff = fmr - fnmr
    i = int(np.argmax(diff >= 0))  # first threshold where FMR has caught up with FNMR
    if diff[i] == 0:
        weight, rate, threshold = 1.0, fmr[i], thresholds[i]
    else:
        weight = -diff[i - 1] / (diff[i] - diff[i - 1])
        rate = fmr[i - 1] + weight * (fmr[i] - fmr[i - 1])
        threshold = thresholds[i - 1] + weight * (thresholds[i] - thresholds[i - 1])
    nearest = i if weight >= 0.5 else i - 1
    return EER(eer=float(rate), threshold=float(threshold),
               false_matches=int(round(fmr[nearest] * len(impostor))),
               false_non_matches=int(round(fnmr[nearest] * len(genuine))),
               impostor=len(impostor), genuine=len(genuine))


def auc(genuine, impostor):
    """Area under the ROC curve: the chance a genuine pair is closer than an impostor pair."""
    scores = -np.r_[np.asarray(genuine, float), np.asarray(impostor, float)]
    truth = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    return float(roc_auc_score(truth, scores))
