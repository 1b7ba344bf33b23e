"""Preprocessing profiles: shapes, value ranges, channel handling and signature ink-crop."""

import cv2
import numpy as np
import pytest

from verifier.core.profiles import PROFILES, Profile, get_profile, ink_crop, preprocess, preprocess_batch


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("shape", [(112, 92, 1), (300, 500, 3), (28, 28, 1)])
def test_every_profile_gives_its_input_shape(name, shape):
    profile = get_profile(name)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = preprocess(image, profile)
    assert out.shape == profile.input_shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_standardize_gives_zero_mean_unit_variance_and_unit_stays_in_range():
    image = np.random.default_rng(1).integers(0, 256, (112, 92, 1), dtype=np.uint8)
    face = preprocess(image, get_profile("face-small"))
    assert abs(face.mean()) < 1e-4 and abs(face.std() - 1) < 1e-3
    product = preprocess(image, get_profile("product"))
    assert product.min() >= 0 and product.max() <= 1


def test_flat_image_does_not_divide_by_zero():
    out = preprocess(np.full((60, 50, 1), 128, np.uint8), get_profile("face-small"))
    assert np.isfinite(out).all() and np.allclose(out, 0)


def test_signature_ink_crop_finds_the_ink_and_keeps_its_proportions():
    paper = np.full((400, 600), 240, np.uint8)
    cv2.rectangle(paper, (100, 180), (260, 220), 20, 2)  # a thin 160 x 40 stroke, wide margins
    crop = ink_crop(paper, 64, 160)
    assert crop.shape[1] / crop.shape[0] == pytest.approx(160 / 64, rel=0.02)
    assert crop.shape[1] < 200  # the empty page around the ink is gone
    out = preprocess(paper[:, :, None], get_profile("signature"))
    assert out.shape == (64, 160, 1)
    assert out.max() > 0.9  # inverted: ink is bright
    assert np.median(out) < 0.1  # paper is dark after inversion


def test_blank_signature_is_returned_whole():
    blank = np.full((100, 300), 250, np.uint8)
    assert ink_crop(blank, 64, 160).shape == blank.shape


def test_batch_and_profile_round_trip():
    images = [np.zeros((112, 92, 1), np.uint8), np.full((50, 40, 3), 200, np.uint8)]
    assert preprocess_batch(images, get_profile("face-small")).shape == (2, 56, 46, 1)
    profile = get_profile("signature")
    assert Profile.from_dict(profile.to_dict()) == profile
    with pytest.raises(ValueError, match="known"):
        get_profile("iris")
