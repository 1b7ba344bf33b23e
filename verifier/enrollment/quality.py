"""Enrollment quality check: refuse images that hold nothing to compare (failure to enrol).

A template made from a blank frame or an empty signature box would match nothing (or,
worse, everything blank), so such images are refused and counted as failures to enrol
(ISO/IEC 19795-1). The checks are deliberately simple and profile-aware; a face detector
("no face found") would slot in here as one more check.
"""

import numpy as np

MIN_CONTRAST = 4.0  # grey-level standard deviation (0-255) below which an image is blank
INK_DARKER_BY = 48  # a pixel is ink when this much darker than the paper (its median)
MIN_INK_FRACTION = 0.002  # signatures: at least this share of the pixels must be ink


def _gray(image):
    image = np.asarray(image)
    if image.ndim == 3:
        image = image.mean(axis=2)
    return image.astype(np.float32)


def check(image, profile):
    """None when the image is fit to enrol, else the reason it is not (a short sentence)."""
    gray = _gray(image)
    contrast = float(gray.std())
    if contrast < MIN_CONTRAST:
        return f"blank image: no contrast (grey-level std {contrast:.1f} < {MIN_CONTRAST})"
    if profile.ink_crop:
        paper = float(np.median(gray))
        ink = float(np.mean(gray < paper - INK_DARKER_BY))
        if ink < MIN_INK_FRACTION:
            return f"empty signature: no ink found ({100 * ink:.2f}% of pixels)"
    return None
