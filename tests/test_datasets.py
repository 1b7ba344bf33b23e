"""Labelled image sets: folders, signature layout, bad folders and the built-in real sets."""

import cv2
import numpy as np
import pytest

from imagesets import FASHION_MNIST_DIR, load_dataset, load_folder, load_orl
from tests.synthetic import write_folder
from verifier.core.errors import DatasetError


def test_folder_layout(image_folder):
    data = load_folder(image_folder)
    assert len(data) == 36 and len(data.identities) == 6
    assert data.counts() == {f"id{k:02d}": 6 for k in range(6)}
    assert data.profile == "small-grey" and "greyscale" in data.profile_reason and not data.forged.any()
    assert load_folder(image_folder).fingerprint == data.fingerprint


def test_subset_renumbers_labels(image_folder):
    data = load_folder(image_folder).subset(["id01", "id04"])
    assert data.identities == ["id01", "id04"]
    assert sorted(set(data.labels.tolist())) == [0, 1] and len(data) == 12
    with pytest.raises(DatasetError, match="not in"):
        load_folder(image_folder).subset(["ghost"])


def test_signature_layout_marks_forgeries(tmp_path):
    for writer in ("w1", "w2"):
        for kind, count in (("genuine", 3), ("forged", 2)):
            folder = tmp_path / writer / kind
            folder.mkdir(parents=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i}.png"), np.full((30, 60), 200 + i, np.uint8))
    data = load_folder(tmp_path)
    assert data.profile == "signature"
    assert data.forged.sum() == 4 and len(data) == 10
    assert data.counts() == {"w1": 3, "w2": 3}


def test_unreadable_files_are_skipped_or_fatal_with_strict(image_folder):
    (image_folder / "id00" / "notes.txt").write_text("not an image")
    data = load_folder(image_folder)
    assert len(data) == 36 and len(data.skipped) == 1 and "notes.txt" in data.skipped[0][0]
    with pytest.raises(DatasetError, match="notes.txt"):
        load_folder(image_folder, strict=True)


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="no identity folders"):
        load_folder(tmp_path)
    (tmp_path / "alice").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_folder(tmp_path)
    (tmp_path / "alice" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="no readable images"):
        load_folder(tmp_path)


def test_identity_with_only_unreadable_files_is_dropped(tmp_path):
    root = write_folder(tmp_path / "f", n_identities=3, per_identity=2)
    for path in (root / "id02").iterdir():
        path.write_bytes(b"broken")
    data = load_folder(root)
    assert data.identities == ["id00", "id01"] and len(data.skipped) == 2


def test_orl_is_real_and_complete():
    data = load_orl()
    assert len(data) == 400 and len(data.identities) == 40
    assert data.images[0].shape == (112, 92, 1)
    assert data.identities[:2] == ["s01", "s02"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_categories():
    data = load_dataset("fashion-mnist")
    assert len(data) == 70_000 and len(data.identities) == 10
    assert np.bincount(data.labels).tolist() == [7000] * 10


def test_folder_loads_camera_sized_photos_the_service_would_refuse(tmp_path):
    """Training folders are the user's own data: a 12 MP photo loads (the service's limit is a few MP)."""
    from verifier.core.images import MAX_PIXELS

    for identity in ("a", "b"):
        (tmp_path / identity).mkdir()
        photo = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
        assert 3000 * 4000 > MAX_PIXELS
        cv2.imwrite(str(tmp_path / identity / "photo.jpg"), photo)
    data = load_folder(tmp_path, strict=True)
    assert len(data) == 2 and data.images[0].shape[:2] == (3000, 4000)
