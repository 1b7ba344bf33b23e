"""Identity splits, batch samplers, per-profile augmentation and the exact EER."""

from dataclasses import replace

import numpy as np
import pytest

from training.augment import Augmentation, augment_batch, augmentation_for
from training.samplers import PairSampler, PKSampler
from training.splits import parse_holdout, split_identities
from verifier.core.errors import DatasetError
from verifier.core.profiles import get_profile

NAMES = [f"p{i:02d}" for i in range(20)]
LABELS = np.repeat(np.arange(10), 6)


def test_split_is_disjoint_complete_and_seeded():
    split = split_identities(NAMES, 5, 3, seed=7)
    assert (len(split.train), len(split.validation), len(split.holdout)) == (12, 3, 5)
    assert not set(split.train) & set(split.validation)
    assert not set(split.train) & set(split.holdout)
    assert not set(split.validation) & set(split.holdout)
    assert sorted(split.train + split.validation + split.holdout) == NAMES
    assert split == split_identities(NAMES, 5, 3, seed=7)
    assert split != split_identities(NAMES, 5, 3, seed=8)


def test_split_with_named_holdout_and_zero_holdout():
    split = split_identities(NAMES, parse_holdout("p03, p01"), 2, seed=0)
    assert split.holdout == ["p01", "p03"]
    assert len(split_identities(NAMES, parse_holdout("0"), 0, seed=0).train) == 20


@pytest.mark.parametrize("holdout,validation,message", [
    (19, 0, "too few identities"), (20, 0, "only 20 identities"), (["nobody"], 0, "unknown identities"),
    (0, 1, "at least 2 identities")])
def test_split_refuses_impossible_requests(holdout, validation, message):
    with pytest.raises(DatasetError, match=message):
        split_identities(NAMES, holdout, validation, seed=0)


def test_pk_sampler_gives_p_identities_times_k_distinct_images_reproducibly():
    sampler = PKSampler(LABELS, p=4, k=3, seed=1)
    batch = sampler.batch(5)
    assert batch.shape == (12,)
    assert len(set(batch.tolist())) == 12
    blocks = LABELS[batch].reshape(4, 3)
    assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == 4  # identity-major
    np.testing.assert_array_equal(batch, PKSampler(LABELS, p=4, k=3, seed=1).batch(5))
    assert not np.array_equal(batch, sampler.batch(6))
    assert not np.array_equal(batch, PKSampler(LABELS, p=4, k=3, seed=2).batch(5))


def test_pk_sampler_caps_p_and_refuses_short_identities():
    assert PKSampler(LABELS, p=50, k=2, seed=0).p == 10
    with pytest.raises(ValueError, match="fewer than K=7"):
        PKSampler(LABELS, p=4, k=7, seed=0)


def test_pair_sampler_is_balanced():
    sampler = PairSampler(LABELS, n_pairs=16, seed=0)
    batch = sampler.batch(3)
    a, b = LABELS[batch[:16]], LABELS[batch[16:]]
    similar = sampler.similar()
    assert similar.sum() == 8
    np.testing.assert_array_equal(a == b, similar == 1)
    assert len(set(batch[:8].tolist()) & set(batch[16:24].tolist())) == 0  # two distinct images


def _mirrored_count(profile, n=64):
    aug = replace(augmentation_for(profile, "strong"), rotation_deg=0.0, scale=0.0, shift=0.0,
                  contrast=0.0, brightness=0.0, noise=0.0)
    image = np.zeros((1,) + profile.input_shape, np.float32)
    image[0, :, : profile.width // 3] = 1.0  # bright on the left only
    batch = np.repeat(image, n, axis=0)
    out = augment_batch(batch, np.array([0, 1]), aug, "unit").numpy()
    return int(np.sum(out[:, 0, -1, 0] > 0.5))


def test_augmentation_respects_allow_flip():
    signature, face = get_profile("signature"), get_profile("face-small")
    assert not signature.allow_flip and not augmentation_for(signature, "strong").flip
    assert augmentation_for(face, "strong").flip
    assert _mirrored_count(signature) == 0
    assert 10 < _mirrored_count(face) < 54


@pytest.mark.parametrize("level", ["strong", "robust"])
@pytest.mark.parametrize("name", ["face", "face-small", "signature", "product"])
def test_augmentation_keeps_shape_and_normalisation(name, level):
    profile = get_profile(name)
    x = np.random.default_rng(0).random((4,) + profile.input_shape).astype(np.float32)
    top = 255.0 if profile.normalize == "none" else 1.0
    x *= top
    out = augment_batch(x, np.array([3, 4]), augmentation_for(profile, level), profile.normalize).numpy()
    assert out.shape == x.shape and np.isfinite(out).all()
    if profile.normalize == "standardize":
        np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)
        np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-3)
    else:
        assert out.min() >= 0 and out.max() <= top and out.max() > 0.5 * top


def test_random_erase_blanks_one_rectangle_in_the_chosen_share():
    x = np.random.default_rng(1).random((200, 20, 20, 1)).astype(np.float32)
    out = augment_batch(x, np.array([5, 6]), Augmentation(erase=0.5), "unit").numpy()
    changed = np.any(out != x, axis=(1, 2, 3))
    assert 60 < changed.sum() < 140
    for image, original in zip(out[changed][:10], x[changed][:10]):
        rows, cols = np.nonzero((image != original)[:, :, 0])
        box = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        np.testing.assert_allclose(box, original.mean(), rtol=1e-5)  # one filled rectangle
    np.testing.assert_array_equal(augment_batch(x, np.array([5, 6]), Augmentation(), "unit").numpy(), x)


def test_illumination_is_a_linear_ramp_over_the_image():
    x = np.full((8, 16, 16, 1), 0.5, np.float32)
    x[:, 0, 0] = 0.0  # the darkest value stays the floor the ramp scales from
    out = augment_batch(x, np.array([7, 8]), Augmentation(illumination=0.5), "unit").numpy()[:, 1:, 1:, 0]
    assert np.all(out.max(axis=(1, 2)) - out.min(axis=(1, 2)) > 0)
    assert out.min() >= 0.5 * 0.5 - 1e-6 and out.max() <= 0.5 * 1.5 + 1e-6
    np.testing.assert_allclose(np.diff(out, 2, axis=1), 0, atol=1e-5)  # planar: no curvature
    np.testing.assert_allclose(np.diff(out, 2, axis=2), 0, atol=1e-5)


def _ink_line(width=160, height=64, thickness=2):
    x = np.zeros((1, height, width, 1), np.float32)
    x[0, height // 2:height // 2 + thickness, 20:width - 20, 0] = 1.0  # a bright horizontal stroke
    return x


def test_signatures_get_ink_augmentation_and_no_photographic_changes():
    signature, face = get_profile("signature"), get_profile("face-small")
    ink = augmentation_for(signature, "robust")
    assert ink.stroke > 0 and ink.elastic > 0 and ink.fill == "CONSTANT"
    assert ink.illumination == 0 and ink.erase == 0 and not ink.flip
    assert augmentation_for(face, "robust").stroke == 0 and augmentation_for(face, "robust").fill == "REFLECT"
    assert augmentation_for(signature, "none") == Augmentation()


def test_stroke_width_jitter_thickens_or_thins_the_ink():
    x = np.repeat(_ink_line(thickness=3), 32, axis=0)
    out = augment_batch(x, np.array([1, 2]), Augmentation(stroke=1.0), "unit").numpy()
    ink = (out > 0.5).sum(axis=(1, 2, 3))
    assert (ink != x[0].sum()).all()  # every image changed (probability 1)
    assert (ink > x[0].sum()).any() and (ink < x[0].sum()).any()  # both a thicker and a thinner pen occur


def test_elastic_jitter_moves_the_stroke_smoothly_and_is_seeded():
    x = _ink_line()
    aug = Augmentation(elastic=3.0)
    first = augment_batch(x, np.array([4, 5]), aug, "unit").numpy()
    again = augment_batch(x, np.array([4, 5]), aug, "unit").numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, x)
    assert abs(first.sum() - x.sum()) < 0.2 * x.sum()  # the ink is moved, not created or lost
    rows = np.flatnonzero(first[0, :, 80, 0] > 0.2)
    assert rows.size and abs(rows.mean() - 32.5) <= 3.5  # by at most the stated pixels


def test_warps_of_ink_fill_the_border_with_blank_paper():
    x = np.zeros((1, 64, 160, 1), np.float32)
    x[0, :, :6, 0] = 1.0  # ink touching the left edge
    aug = Augmentation(shift=0.2, fill="CONSTANT")
    out = augment_batch(np.repeat(x, 8, axis=0), np.array([6, 7]), aug, "unit").numpy()
    mirrored = Augmentation(shift=0.2)
    reflected = augment_batch(np.repeat(x, 8, axis=0), np.array([6, 7]), mirrored, "unit").numpy()
    assert out.sum() < reflected.sum()  # no mirrored strokes appear beyond the edge
