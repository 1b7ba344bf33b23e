"""Decoded images -> model inputs for a profile, with face acquisition where the profile asks.

A face profile (`Profile.detector`) finds the face, aligns it from its five landmarks
(`verifier.core.faces.align`) and only then preprocesses the chip. An image in which no face is
found is a *failure to acquire* (ISO/IEC 19795-1): serving answers 422 `no_face`,
enrollment counts a failure to enrol, training and calibration count and skip it.
Training, calibration, serving and enrollment all come through here, so the tower sees
the same chips everywhere.
"""

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np

from verifier.core.errors import VerifierError
from verifier.core.faces.align import align
from verifier.core.faces.detector import FaceDetector
from verifier.core.profiles import preprocess

DETECTORS = ("mtcnn",)


class NoFaceFound(VerifierError):
    """A face profile found no face in an image (a failure to acquire)."""

    status = 422
    code = "no_face"


@dataclass
class Acquired:
    """What acquisition made of a list of images."""

    inputs: np.ndarray  # (M, H, W, C) float32 model inputs, for the M images acquired
    acquired: np.ndarray  # (N,) bool: which of the N images gave an input
    faces: list  # (N,) the `Face` found in each image (None: no face, or no detection asked)

    @property
    def failed(self):
        """Indices of the images in which no face was found."""
        return [int(i) for i in np.flatnonzero(~self.acquired)]


_detectors = {}
_lock = threading.Lock()


def detector_for(profile):
    """The process's detector for a profile's settings, built on first use (thread-safe)."""
    if profile.detector not in DETECTORS:
        raise VerifierError(f"unknown face detector {profile.detector!r}; known: {', '.join(DETECTORS)}",
                            code="bad_profile")
    key = (profile.detector, profile.detect_border)
    with _lock:
        if key not in _detectors:
            _detectors[key] = FaceDetector(border=profile.detect_border)
        return _detectors[key]


def largest_face(faces):
    """The face with the largest box: the subject of a photo is its most prominent face."""
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), default=None)


def find_face(image, profile):
    """The face a face profile would align in `image`, or None."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    face = largest_face(detector_for(profile).detect(image))
    return image, face


def chip_profile(profile):
    """The profile for images already acquired (aligned chips): the same preprocessing, no detection."""
    return dataclasses.replace(profile, detector=None)


def aligned_chip(image, profile):
    """(uint8 aligned chip, Face) for a face profile, or (None, None) when no face is found."""
    rgb, face = find_face(image, profile)
    if face is None:
        return None, None
    return align(rgb, face.landmarks, profile.height), face


def acquire_dataset(data, profile):
    """LabelledImages -> (the same with each image replaced by its aligned chip, indices of the
    images dropped because no face was found). Training preprocesses the chips with
    `chip_profile(profile)`, so it sees exactly what serving's `acquire` feeds the tower."""
    chips = [aligned_chip(image, profile)[0] for image in data.images]
    keep = np.array([chip is not None for chip in chips], bool)
    kept = dataclasses.replace(data, images=[chip for chip in chips if chip is not None],
                               labels=data.labels[keep], forged=data.forged[keep])
    return kept, [int(i) for i in np.flatnonzero(~keep)]


def acquire_one(image, profile):
    """One decoded uint8 image -> (model input, Face), or (None, None) when no face is found."""
    if profile.detector is None:
        return preprocess(image, profile), None
    chip, face = aligned_chip(image, profile)
    return (None, None) if face is None else (preprocess(chip, profile), face)


def acquire(images, profile, map_images=map):
    """Decoded uint8 images -> `Acquired`; images with no face are left out of `inputs`.

    `map_images(function, images)` runs the per-image work (e.g. a thread pool's `map`).
    """
    results = list(map_images(lambda image: acquire_one(image, profile), images))
    kept = [item for item, _ in results if item is not None]
    inputs = np.stack(kept) if kept else np.empty((0,) + profile.input_shape, np.float32)
    acquired = np.array([item is not None for item, _ in results], bool).reshape(len(images))
    return Acquired(inputs=inputs, acquired=acquired, faces=[face for _, face in results])


def acquire_all(images, profile, names=None, map_images=map):
    """Like `acquire`, but every image must give an input: NoFaceFound (422) names the first that did not."""
    result = acquire(images, profile, map_images)
    if result.failed:
        first = result.failed[0]
        name = names[first] if names else f"image {first}"
        more = f" (and {len(result.failed) - 1} more)" if len(result.failed) > 1 else ""
        raise NoFaceFound(f"no face found in {name}{more}: send a photo in which the face is visible, "
                          f"or use a bundle whose profile takes aligned chips")
    return result
