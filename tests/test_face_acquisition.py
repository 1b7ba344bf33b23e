"""Face acquisition: the similarity alignment onto the template, and detect-then-align for
the face profile (no face is a failure to acquire, never a made-up chip)."""

import numpy as np
import pytest

from imagesets import load_orl
from verifier.core.acquisition import NoFaceFound, acquire, acquire_all, acquire_dataset, chip_profile
from verifier.core.faces.align import TEMPLATE, align, similarity_transform, template_for
from verifier.core.profiles import get_profile, preprocess


def _similar(points, angle, scale, shift):
    c, s = np.cos(angle), np.sin(angle)
    return scale * points @ np.array([[c, s], [-s, c]]) + shift


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    source = _similar(TEMPLATE, 0.3, 0.7, np.array([12.0, -5.0]))
    matrix = similarity_transform(source, TEMPLATE)
    mapped = source @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, TEMPLATE, atol=1e-9)
    assert np.linalg.det(matrix[:, :2]) > 0  # never a mirror image


def test_align_puts_the_landmarks_on_the_template():
    image = np.zeros((300, 260, 3), np.uint8)
    landmarks = _similar(TEMPLATE, -0.2, 1.6, np.array([20.0, 40.0]))
    for x, y in landmarks:
        image[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = 255
    chip = align(image, landmarks)
    assert chip.shape == (150, 150, 3)
    for x, y in TEMPLATE:  # each bright mark lands within a pixel of its template point
        window = chip[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3, 0]
        assert window.max() > 100
    np.testing.assert_allclose(template_for(300), TEMPLATE * 2)


@pytest.fixture(scope="module")
def orl():
    return load_orl()


def test_face_profile_detects_and_aligns_orl_faces(orl):
    profile = get_profile("face")
    result = acquire(orl.images[:4], profile)
    assert result.inputs.shape == (4, 150, 150, 3) and result.acquired.all()
    face = result.faces[0]
    assert face.score > 0.9
    eyes_y, mouth_y = face.landmarks[:2, 1].mean(), face.landmarks[3:, 1].mean()
    assert eyes_y < face.landmarks[2, 1] < mouth_y  # eyes above the nose above the mouth
    assert 0.0 <= result.inputs.min() and result.inputs.max() <= 255.0  # the tower normalises itself


def test_no_face_is_a_failure_to_acquire_with_a_clear_422(orl):
    profile = get_profile("face")
    blank = np.full((120, 100), 128, np.uint8)
    result = acquire([orl.images[0], blank], profile)
    assert result.failed == [1] and len(result.inputs) == 1 and result.faces[1] is None
    with pytest.raises(NoFaceFound, match="no face found in image_b") as caught:
        acquire_all([orl.images[0], blank], profile, names=["image_a", "image_b"])
    assert caught.value.status == 422 and caught.value.code == "no_face"


def test_training_chips_are_what_serving_feeds_the_tower(orl):
    profile = get_profile("face")
    few = orl.subset(orl.identities[:2])
    chips, failed = acquire_dataset(few, profile)
    assert failed == [] and len(chips) == len(few)
    served = acquire(few.images[:3], profile).inputs
    trained = np.stack([preprocess(chip, chip_profile(profile)) for chip in chips.images[:3]])
    np.testing.assert_array_equal(served, trained)


def test_profiles_without_a_detector_take_the_image_as_it_is():
    image = np.random.default_rng(0).integers(0, 256, (112, 92), dtype=np.uint8)
    result = acquire([image], get_profile("face-small"))
    assert result.acquired.all() and result.faces == [None]
    np.testing.assert_array_equal(result.inputs[0], preprocess(image, get_profile("face-small")))
