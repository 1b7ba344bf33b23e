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


def _scan(rng, shape=(180, 400), ink=60, paper=235, texture=12.0, shading=40.0, specks=40):
    """A synthetic scan: a curved stroke on textured, unevenly lit paper with dust specks.
    Returns the scan and the stroke's own mask (where the ink really is)."""
    rows, cols = shape
    stroke = np.zeros(shape, np.uint8)
    xs = np.linspace(60, 340, 200)
    ys = 90 + 40 * np.sin(xs / 35.0)
    cv2.polylines(stroke, [np.stack([xs, ys], 1).astype(np.int32)], False, 255, 3)
    light = np.linspace(-shading / 2, shading / 2, cols)[None, :]  # a scanner lamp darker on one side
    page = paper + light + rng.normal(0, texture, shape)
    page = cv2.GaussianBlur(page.astype(np.float32), (0, 0), 1.2)  # paper fibres, not pixel noise
    page = np.where(stroke > 0, ink + rng.normal(0, 5, shape), page)
    for y, x in zip(rng.integers(0, rows, specks), rng.integers(0, cols, specks)):
        page[y, x] = 40  # single-pixel dust
    return np.clip(page, 0, 255).astype(np.uint8), stroke > 0


def test_clean_ink_finds_the_stroke_on_textured_unevenly_lit_paper():
    rng = np.random.default_rng(0)
    scan, truth = _scan(rng)
    from verifier.core.profiles import clean_ink

    cleaned = clean_ink(scan)
    ink = cleaned < 255
    near = cv2.dilate(truth.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert (ink & truth).sum() / truth.sum() > 0.9  # the stroke is kept
    assert (ink & ~near).sum() < 20  # paper is plain white: no texture, shading or dust left
    assert np.median(cleaned[truth]) < 64  # and the ink is dark


def test_ink_darkness_is_normalised_so_another_pen_looks_the_same():
    rng = np.random.default_rng(1)
    light, _ = _scan(rng, ink=130)  # a grey pencil
    dark, _ = _scan(np.random.default_rng(1), ink=20)  # a black felt pen, same stroke
    profile = get_profile("signature")
    a, b = preprocess(light, profile), preprocess(dark, profile)
    assert np.abs(a - b).mean() < 0.02
    old = Profile("old", 64, 160, normalize="unit", ink_crop=True, invert=True)  # without clean_ink
    assert np.abs(preprocess(light, old) - preprocess(dark, old)).mean() > 2 * np.abs(a - b).mean()


def test_the_crop_ignores_dust_far_from_the_signature():
    rng = np.random.default_rng(2)
    scan, _ = _scan(rng, specks=0)
    scan[5, 5] = scan[170, 395] = 30  # two specks in opposite corners
    from verifier.core.profiles import clean_ink

    crop = ink_crop(clean_ink(scan), 64, 160)
    assert crop.shape[1] < 0.9 * scan.shape[1]  # cropped to the stroke, not stretched to the specks


def test_a_blank_textured_page_has_no_ink():
    from verifier.core.profiles import clean_ink

    rng = np.random.default_rng(3)
    page = np.clip(235 + rng.normal(0, 6, (120, 300)), 0, 255).astype(np.uint8)
    assert (clean_ink(page) == 255).all()


def test_letterbox_keeps_the_whole_picture_and_pads_with_mid_grey():
    wide = np.zeros((50, 200, 3), np.uint8)
    wide[:, :, 0] = 255  # all red, 4:1
    out = preprocess(wide, get_profile("product"))
    assert out.shape == (160, 160, 3) and out.min() >= 0 and out.max() <= 1
    assert np.allclose(out[80, :, 0], 1.0) and np.allclose(out[80, :, 1], 0.0)  # every column of red kept
    assert np.allclose(out[0], 128 / 255, atol=1e-6) and np.allclose(out[-1], 128 / 255, atol=1e-6)
    tall = np.full((90, 30, 1), 10, np.uint8)
    grey = preprocess(tall, get_profile("product-grey"))
    assert grey.shape == (96, 96, 1) and np.allclose(grey[:, 0], 128 / 255) and np.allclose(grey[48, 48], 10 / 255)


@pytest.mark.parametrize("name, channels", [("product", 3), ("small-colour", 3), ("product-grey", 1),
                                            ("small-grey", 1)])
def test_colour_profiles_keep_colour_and_grey_ones_grey(name, channels):
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 2] = 200  # blue
    out = preprocess(image, get_profile(name))
    assert out.shape[-1] == channels
    if channels == 3:
        assert out[..., 2].max() > 0.7 and out[..., 0].max() == 0  # still blue, not grey
