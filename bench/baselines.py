"""Verification baselines that need no deep learning, fitted on training identities only.

    raw          cosine distance between preprocessed pixel vectors
    eigenfaces   PCA (Turk & Pentland 1991) fitted on the training images, cosine distance
    fisherfaces  PCA, then LDA to c - 1 dimensions (Belhumeur et al. 1997), cosine distance.
                 Belhumeur's PCA to N - c dimensions keeps the within-class noise of the
                 training images and fails on unseen identities (README.md has the figures);
                 PCA to 2c dimensions (60 for 30 identities) is used.
"""

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis


def _flat(images):
    return np.asarray(images, np.float64).reshape(len(images), -1)


def raw_pixels(train_images, train_labels, test_images):
    return _flat(test_images)


def eigenfaces(train_images, train_labels, test_images, variance=0.95):
    pca = PCA(n_components=variance, svd_solver="full").fit(_flat(train_images))
    return pca.transform(_flat(test_images))


def fisherfaces(train_images, train_labels, test_images):
    x = _flat(train_images)
    n_classes = len(np.unique(train_labels))
    pca = PCA(n_components=min(len(x) - n_classes, 2 * n_classes, x.shape[1]), random_state=0).fit(x)
    lda = LinearDiscriminantAnalysis(n_components=n_classes - 1).fit(pca.transform(x), train_labels)
    return lda.transform(pca.transform(_flat(test_images)))


BASELINES = {"raw-pixels": raw_pixels, "eigenfaces": eigenfaces, "fisherfaces": fisherfaces}
