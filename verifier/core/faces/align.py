"""Five-point face alignment: a similarity transform (rotation, uniform scale, shift) that
maps the detected landmarks onto a canonical template, then a warp to a square RGB chip.

The template reproduces the geometry of dlib's 150x150 face chips (the pretrained tower
was trained on those): MTCNN's five keypoints measured on dlib's chips, median.
"""

import cv2
import numpy as np

CHIP_SIZE = 150
# left eye, right eye, nose tip, left mouth corner, right mouth corner, on a 150x150 chip
TEMPLATE = np.array([[47.0, 46.0], [101.0, 45.0], [74.0, 75.0], [51.0, 101.0], [97.0, 101.0]])


def similarity_transform(source, target):
    """The 2x3 least-squares similarity transform taking `source` points onto `target`
    (Umeyama 1991, without reflection)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mean_s, target - mean_t
    u, sigma, vt = np.linalg.svd(t.T @ s / len(source))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ d @ vt
    variance = (s ** 2).sum() / len(source)
    scale = float(np.trace(np.diag(sigma) @ d) / variance) if variance > 0 else 1.0
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def template_for(size=CHIP_SIZE):
    """The canonical landmarks scaled to a chip of `size` pixels."""
    return TEMPLATE * (size / CHIP_SIZE)


def align(image, landmarks, size=CHIP_SIZE):
    """uint8 HxWx3 image and its (5, 2) landmarks -> the size x size aligned chip.

    Pixels the chip needs from outside the image repeat the image's edge, which for tight
    face crops reads closer to a real face than black does.
    """
    matrix = similarity_transform(landmarks, template_for(size))
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
