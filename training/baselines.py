"""Verification baselines that need no deep learning, fitted on training identities only.

    raw          cosine distance between preprocessed pixel vectors
    eigenfaces   PCA (Turk & Pentland 1991) fitted on the training images, cosine distance
                 (`pca` is the same baseline under its general name, for data that is not faces)
    fisherfaces  PCA, then LDA to c - 1 dimensions (Belhumeur et al. 1997), cosine distance.
                 Belhumeur's PCA to N - c dimensions keeps the within-class noise of the
                 training images and fails on unseen identities (README.md has the figures);
                 PCA to 2c dimensions (60 for 30 identities) is used.
    hog          histograms of oriented gradients (Dalal & Triggs 2005): 9 unsigned bins over
                 8x8 cells, 2x2-cell blocks L2-Hys normalised, cosine distance
    lbp          uniform local binary patterns (Ojala et al. 2002, 8 neighbours, 59 codes)
                 histogrammed in a 4 x 8 grid of cells, square-rooted, cosine distance
    colour-hist  a joint 8 x 8 x 8 HSV histogram of the whole image (Swain & Ballard 1991; grey
                 images: 32 grey levels), L1-normalised and square-rooted, so that cosine
                 distance is 1 - the Bhattacharyya coefficient (Hellinger); layout-blind

HOG and LBP are the classical features of offline signature verification; they fit nothing.
The colour histogram fits nothing either: it is what products and scenes are told apart by
when nothing is learnt.
"""

import cv2
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


def _as_uint8(image):
    """A preprocessed HxWx1 (or HxW) float image stretched to 0-255 uint8 (features need bytes)."""
    image = np.asarray(image, np.float64).reshape(image.shape[0], image.shape[1])
    low, high = image.min(), image.max()
    return np.zeros(image.shape, np.uint8) if high <= low else ((image - low) * (255 / (high - low))).astype(np.uint8)


def _hog_features(image, cell, bins=9):
    """One image's HOG vector: unsigned gradient orientation histograms per cell, weighted by
    magnitude, each 2x2-cell block L2-normalised, clipped at 0.2 and normalised again (L2-Hys)."""
    image = image.astype(np.float64)
    gy, gx = np.gradient(image)
    magnitude, angle = np.hypot(gx, gy), np.rad2deg(np.arctan2(gy, gx)) % 180
    rows, cols = image.shape[0] // cell, image.shape[1] // cell
    which = np.minimum((angle / (180 / bins)).astype(np.int64), bins - 1)
    cells = np.zeros((rows, cols, bins))
    for b in range(bins):
        weight = (magnitude * (which == b))[:rows * cell, :cols * cell]
        cells[:, :, b] = weight.reshape(rows, cell, cols, cell).sum(axis=(1, 3))
    blocks = np.concatenate([cells[:-1, :-1], cells[1:, :-1], cells[:-1, 1:], cells[1:, 1:]], axis=2)
    blocks /= np.linalg.norm(blocks, axis=2, keepdims=True) + 1e-6
    blocks = np.minimum(blocks, 0.2)
    blocks /= np.linalg.norm(blocks, axis=2, keepdims=True) + 1e-6
    return blocks.ravel()


def hog(train_images, train_labels, test_images, cell=8):
    return np.array([_hog_features(_as_uint8(image), cell) for image in test_images])


def _uniform_lbp_table():
    """The 256 8-bit codes -> 59 labels: one per uniform pattern (at most two 0/1 transitions), one for the rest."""
    table, label = np.full(256, 58, np.int64), 0
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        if sum(bits[i] != bits[(i + 1) % 8] for i in range(8)) <= 2:
            table[code], label = label, label + 1
    return table


UNIFORM_LBP = _uniform_lbp_table()


def _lbp_codes(image):
    """Each interior pixel's 8-neighbour code (a bit set where the neighbour is >= the centre)."""
    centre = image[1:-1, 1:-1]
    rows, cols = image.shape
    code = np.zeros(centre.shape, np.int64)
    offsets = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
    for bit, (dy, dx) in enumerate(offsets):
        neighbour = image[1 + dy:rows - 1 + dy, 1 + dx:cols - 1 + dx]
        code |= (neighbour >= centre).astype(np.int64) << bit
    return UNIFORM_LBP[code]


def lbp(train_images, train_labels, test_images, grid=(4, 8)):
    features = []
    for image in test_images:
        labels = _lbp_codes(_as_uint8(image).astype(np.int64))
        cells = [np.bincount(block.ravel(), minlength=59)
                 for band in np.array_split(labels, grid[0], axis=0)
                 for block in np.array_split(band, grid[1], axis=1)]
        features.append(np.sqrt(np.concatenate(cells) / labels.size))
    return np.array(features)


def _colour_bytes(images):
    """A preprocessed (N, H, W, C) batch back to 0-255 per image: [0, 1] ("unit") scaled by 255,
    0-255 ("none") as it is, anything else (standardised) stretched min..max over all channels
    together, so that the hues and the channels' proportions stay."""
    out = np.empty(images.shape, np.uint8)
    for i, image in enumerate(np.asarray(images, np.float64)):
        low, high = image.min(), image.max()
        if low >= 0 and high <= 1:
            image = image * 255
        elif low < 0 or high > 255:
            image = np.zeros_like(image) if high <= low else (image - low) * (255 / (high - low))
        out[i] = np.clip(np.rint(image), 0, 255)
    return out


def colour_histogram(train_images, train_labels, test_images, bins=(8, 8, 8), grey_bins=32):
    """Per image a joint HSV histogram (hue, saturation, value bins; C == 1: grey levels),
    L1-normalised then square-rooted (Hellinger)."""
    pixels = _colour_bytes(np.asarray(test_images))
    n = len(pixels)
    if pixels.shape[-1] == 1:
        index, size = pixels.reshape(n, -1).astype(np.int64) * grey_bins // 256, grey_bins
    else:
        hsv = np.stack([cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2HSV) for image in pixels])
        hsv = hsv.reshape(n, -1, 3).astype(np.int64)
        h, s, v = hsv[:, :, 0] * bins[0] // 180, hsv[:, :, 1] * bins[1] // 256, hsv[:, :, 2] * bins[2] // 256
        index, size = (h * bins[1] + s) * bins[2] + v, bins[0] * bins[1] * bins[2]
    counts = np.bincount((index + size * np.arange(n)[:, None]).ravel(), minlength=n * size).reshape(n, size)
    return np.sqrt(counts / counts.sum(axis=1, keepdims=True))


BASELINES = {"raw-pixels": raw_pixels, "eigenfaces": eigenfaces, "fisherfaces": fisherfaces, "hog": hog, "lbp": lbp,
             "colour-hist": colour_histogram}
ALIASES = {"pca": "eigenfaces"}  # --models pca: the eigenfaces row under its general name
