"""The preprocessing profile for a folder whose kind was not stated, chosen from its images.

A folder is face data only when a face detector finds a face in most of a sample of its
images; otherwise colour stays colour and grey stays grey, and thumbnails keep their own
size. The reason is a sentence, printed by the CLI and recorded in the bundle.
"""

from dataclasses import dataclass

import numpy as np

from verifier.core.profiles import get_profile

SAMPLE = 12  # images looked at, spread over the identities
SMALL_SIDE = 48  # px: a median short side at most this is a thumbnail (CIFAR, Fashion-MNIST)
COLOUR_SPREAD = 6.0  # mean |R - G| + |G - B| above which an image is in colour, not grey in RGB
FACE_SHARE = 0.75  # share of the sample with a face found for the folder to be faces


@dataclass(frozen=True)
class ProfileChoice:
    """A profile name and why it was chosen."""

    name: str
    reason: str


def sample_indices(labels, count=SAMPLE):
    """Up to `count` image indices, round-robin over the identities (the first images of each)."""
    by_identity = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    picked, depth = [], 0
    while len(picked) < count and any(depth < len(rows) for rows in by_identity):
        picked += [int(rows[depth]) for rows in by_identity if depth < len(rows)]
        depth += 1
    return picked[:count]


def is_colour(image):
    """Whether a decoded image holds colour (three channels that differ), not grey."""
    if image.ndim < 3 or image.shape[2] == 1:
        return False
    pixels = image[::4, ::4].astype(np.int16)
    spread = np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2])
    return float(spread.mean()) > COLOUR_SPREAD


def count_faces(images):
    """How many of the images the face profile's detector finds a face in."""
    from verifier.core.acquisition import find_face

    profile = get_profile("face")
    return sum(find_face(image, profile)[1] is not None for image in images)


def choose_profile(images, labels, *, detect_faces=True):
    """A folder's decoded images and labels -> the `ProfileChoice` for them."""
    sample = [images[i] for i in sample_indices(np.asarray(labels))]
    colour = sum(is_colour(image) for image in sample) * 2 > len(sample)
    side = int(np.median([min(image.shape[:2]) for image in sample]))
    looks = f"{'colour' if colour else 'greyscale'} images, median short side {side} px"
    if side <= SMALL_SIDE:
        name = "small-colour" if colour else "small-grey"
        profile = get_profile(name)
        return ProfileChoice(name, f"{looks}: thumbnails, resized to {profile.height}x{profile.width} ({name})")
    if detect_faces:
        faces = count_faces(sample)
        if faces >= FACE_SHARE * len(sample):
            return ProfileChoice("face", f"{looks}; a face found in {faces} of {len(sample)} sampled images (face)")
        looks += f"; a face in only {faces} of {len(sample)} sampled images"
    name = "product" if colour else "product-grey"
    return ProfileChoice(name, f"{looks}: whole photos, letterboxed ({name})")
