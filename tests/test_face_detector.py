"""The MTCNN face detector: real ORL faces, non-faces, the model files' checks, threads, agreement."""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from imagesets import orl_root
from verifier.core.errors import BundleError, DatasetError
from verifier.core.faces.detector import DEFAULT_MODEL_DIR, RECORD_FILE, FaceDetector, nms
from verifier.core.images import read_image

ORL_SAMPLES = [("s1", 1), ("s7", 3), ("s13", 5), ("s22", 8), ("s35", 10)]


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def orl_faces():
    """A few ORL images, 112x92x1 grey uint8."""
    try:
        root = orl_root()
    except DatasetError as exc:
        pytest.skip(str(exc))
    return [read_image(root / person / f"{shot}.pgm") for person, shot in ORL_SAMPLES]


def assert_plausible(face, shape):
    """Eyes above the nose above the mouth, left (smaller x) before right, all inside the box."""
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    x0, y0, x1, y1 = face.box
    assert max(ly, ry) < ny < min(mly, mry)
    assert lx < rx and mlx < mrx
    assert (face.landmarks[:, 0] > x0).all() and (face.landmarks[:, 0] < x1).all()
    assert (face.landmarks[:, 1] > y0).all() and (face.landmarks[:, 1] < y1).all()
    assert 0 <= x0 < x1 <= shape[1] - 1 and 0 <= y0 < y1 <= shape[0] - 1


def test_one_plausible_face_per_orl_image(detector, orl_faces):
    for image in orl_faces:
        faces = detector.detect(image)
        assert len(faces) == 1
        assert faces[0].score > 0.9
        assert faces[0].landmarks.shape == (5, 2)
        assert_plausible(faces[0], image.shape)


def test_grey_layouts_and_rgb_agree(detector, orl_faces):
    image = orl_faces[0]
    results = [detector.detect(im) for im in (image, image[:, :, 0], np.repeat(image, 3, axis=2))]
    for faces in results[1:]:
        assert [f.to_dict() for f in faces] == [f.to_dict() for f in results[0]]


def test_no_face_in_flat_grey_noise_or_a_tiny_image(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.full((120, 100, 3), 128, np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)) == []
    assert detector.detect(np.full((8, 8), 200, np.uint8)) == []


def test_to_dict_is_json(detector, orl_faces):
    face = detector.detect(orl_faces[1])[0]
    data = json.loads(json.dumps(face.to_dict()))
    assert set(data) == {"box", "score", "landmarks"}
    assert len(data["box"]) == 4 and len(data["landmarks"]) == 5 and all(len(p) == 2 for p in data["landmarks"])
    assert data["box"][0] == round(face.box[0], 1) and 0.0 <= data["score"] <= 1.0
    assert not face.landmarks.flags.writeable


def test_border_keeps_the_original_frame(orl_faces):
    image = orl_faces[2]
    plain = FaceDetector().detect(image)[0]
    padded = FaceDetector(border=0.2).detect(image)[0]
    assert_plausible(padded, image.shape)
    assert np.abs(padded.landmarks - plain.landmarks).max() < 4.0
    assert np.abs(np.subtract(padded.box, plain.box)).max() < 8.0


def test_bad_input_and_parameters_are_refused(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((50, 50, 4), np.uint8))
    for kwargs in ({"thresholds": (0.6, 0.7)}, {"scale_factor": 1.2}, {"min_face_size": 0}, {"border": -0.1}):
        with pytest.raises(ValueError):
            FaceDetector(**kwargs)


@pytest.mark.parametrize("damage, message", [
    ("substitute", "pnet.tflite is corrupt or substituted"),
    ("truncate", "onet.tflite is corrupt or substituted"),
    ("delete", "cannot read .*rnet.tflite"),
    ("record", f"{RECORD_FILE} is missing or unreadable"),
])
def test_damaged_model_files_raise_bundle_error(tmp_path, damage, message):
    model_dir = tmp_path / "mtcnn"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    if damage == "substitute":
        shutil.copy(model_dir / "rnet.tflite", model_dir / "pnet.tflite")
    elif damage == "truncate":
        data = (model_dir / "onet.tflite").read_bytes()
        (model_dir / "onet.tflite").write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        (model_dir / "rnet.tflite").unlink()
    else:
        (model_dir / RECORD_FILE).write_text("{not json")
    with pytest.raises(BundleError, match=message):
        FaceDetector(model_dir)


def test_record_names_its_source_and_licence():
    record = json.loads((DEFAULT_MODEL_DIR / RECORD_FILE).read_text())
    assert record["source"]["wheel"] == "mtcnn-1.0.0-py3-none-any.whl" and len(record["source"]["sha256"]) == 64
    assert record["licence"] == "MIT" and "Permission is hereby granted" in record["licence_text"]
    assert set(record["nets"]) == {"pnet", "rnet", "onet"} and record["converter"].startswith("tensorflow")


def test_threads_share_a_detector(detector, orl_faces):
    expected = [[f.to_dict() for f in detector.detect(im)] for im in orl_faces]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda im: [f.to_dict() for f in detector.detect(im)], orl_faces * 4))
    assert got == expected * 4


def test_padded_batches_and_cached_shapes_change_no_output(monkeypatch):
    rnet = FaceDetector()._nets()["rnet"]
    patches = np.random.default_rng(0).uniform(-1, 1, (3, 24, 24, 3)).astype(np.float32)
    one_by_one = np.concatenate([rnet(patch[None]) for patch in patches])
    np.testing.assert_array_equal(rnet(patches), one_by_one)  # run as a batch of 4, one zero patch
    assert (4, 24, 24, 3) in rnet.by_shape and (3, 24, 24, 3) not in rnet.by_shape
    monkeypatch.setattr(type(rnet), "MAX_SHAPES", 2)
    for count in (1, 2, 4, 8):
        rnet(np.zeros((count, 24, 24, 3), np.float32))
    assert list(rnet.by_shape) == [(4, 24, 24, 3), (8, 24, 24, 3)]  # the least recently used dropped


def test_detection_imports_no_tensorflow():
    code = ("import sys, numpy as np; from verifier.core.faces.detector import FaceDetector; "
            "FaceDetector().detect(np.full((60, 60), 128, np.uint8)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "[]"


def test_nms_is_one_pass_and_blocking_changes_nothing():
    boxes = np.array([[0, 0, 10, 10, 0.9], [3, 0, 13, 10, 0.8], [6, 0, 16, 10, 0.7], [50, 50, 60, 60, 0.6]], float)
    # the third box overlaps only the second (IoU 0.54; 0.25 with the first), itself dropped:
    # greedy NMS would keep it, the package's one-pass rule drops it
    assert nms(boxes, 0.5).tolist() == [True, False, False, True]
    rng = np.random.default_rng(0)
    corners = rng.random((300, 2)) * 100
    many = np.column_stack([corners, corners + rng.random((300, 2)) * 30 + 1, np.linspace(1, 0, 300)])
    for by_min_area in (False, True):
        assert np.array_equal(nms(many, 0.5, by_min_area, block=7), nms(many, 0.5, by_min_area))


def test_export_refuses_an_unpinned_wheel(tmp_path):
    from training.mtcnn_export import ExportError, read_wheel

    fake = tmp_path / "mtcnn-1.0.0-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(ExportError, match="not the pinned"):
        read_wheel(fake)


def test_agrees_with_the_mtcnn_package(detector, orl_faces):
    """Only where the original package is importable (it is not a dependency)."""
    package = getattr(pytest.importorskip("mtcnn"), "MTCNN", None)
    if package is None:
        pytest.skip("an `mtcnn` on the path that is not the mtcnn package")
    reference = package()
    for image in orl_faces[:3]:
        ref = reference.detect_faces(np.repeat(image, 3, axis=2), output_type="numpy", box_format="xyxy",
                                     threshold_onet=detector.thresholds[2])
        faces = detector.detect(image)
        assert len(faces) == len(ref)
        for row, face in zip(ref[np.argsort(-ref[:, 5])], faces):
            assert np.abs(row[1:5] - np.asarray(face.box)).max() < 0.05
            assert np.abs(np.stack([row[6:11], row[11:16]], axis=1) - face.landmarks).max() < 0.05
            assert abs(row[5] - face.score) < 1e-4
