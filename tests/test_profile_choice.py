"""The profile chosen for a folder whose kind was not stated: colour kept, never face by accident."""

import cv2
import numpy as np
import pytest

from imagesets import load_folder
from imagesets.choice import choose_profile, is_colour, sample_indices


def _images(shape, colour, n=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.integers(0, 256, shape[:2] + (1,), dtype=np.uint8).repeat(3, axis=2)
        if colour:
            image[..., 0] = 255 - image[..., 0]
        out.append(image)
    return out, np.repeat(np.arange(n // 2), 2)


@pytest.mark.parametrize("shape, colour, expected", [
    ((224, 224), True, "product"), ((120, 90), False, "product-grey"),
    ((32, 32), True, "small-colour"), ((28, 28), False, "small-grey")])
def test_colour_and_size_choose_the_profile_and_say_why(shape, colour, expected):
    images, labels = _images(shape, colour)
    choice = choose_profile(images, labels, detect_faces=False)
    assert choice.name == expected
    assert ("colour" if colour else "greyscale") in choice.reason and f"({expected})" in choice.reason


def test_photos_without_faces_are_not_given_the_face_profile():
    images, labels = _images((160, 160), True)
    choice = choose_profile(images, labels)  # the real detector runs on every sampled image
    assert choice.name == "product" and "a face in only 0 of 8 sampled images" in choice.reason


def test_grey_stored_as_rgb_is_grey_and_the_sample_spreads_over_identities():
    grey = np.full((40, 40, 3), 90, np.uint8)
    assert not is_colour(grey) and not is_colour(grey[:, :, :1])
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    assert sample_indices(labels, 4) == [0, 4, 6, 1]


def test_a_folder_records_its_choice(tmp_path):
    for item, colour in (("red", (0, 0, 220)), ("blue", (220, 0, 0))):
        (tmp_path / item).mkdir()
        for i in range(3):
            image = np.full((100, 140, 3), colour, np.uint8)
            cv2.circle(image, (30 + 20 * i, 50), 15, (255, 255, 255), -1)
            cv2.imwrite(str(tmp_path / item / f"{i}.png"), image)
    data = load_folder(tmp_path)
    assert data.profile == "product" and "colour images, median short side 100 px" in data.profile_reason
    assert data.subset(["red"]).profile_reason == data.profile_reason
