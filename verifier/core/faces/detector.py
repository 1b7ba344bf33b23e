"""MTCNN face detection (box, score, five landmarks) through LiteRT: no TensorFlow import.

The three nets are the `mtcnn==1.0.0` wheel's weights (MIT), exported once by
`python -m training.mtcnn_export` to `verifier/core/faces/mtcnn/`; weights.json records each
file's sha256, checked when a detector is built. The algorithm is the package's:

    pyramid    (x - 127.5) / 128, area-resized by (12 / min_face_size) * scale_factor**k
    PNet       12-px windows at stride 2 scoring > thresholds[0], regressed, NMS 0.5 per
               scale, NMS 0.7 over all scales, squared
    RNet       24 x 24 bilinear patches; score > thresholds[1], regressed, NMS 0.7, squared
    ONet       48 x 48 patches; score > thresholds[2], regressed, landmarks, NMS 0.7 of the
               smaller box's area

NMS is the package's one-pass rule: a box goes when any better-scoring box overlaps it by
more than the threshold, even one that went itself. Two departures: the pyramid keeps every
level whose short side is at least 12 px (the package counts levels from the image size
alone; at the default min_face_size of 20 the pyramids agree but for one extra level at a
few image sizes, see `pyramid`), and the ONet threshold defaults to 0.7 as in the MTCNN
paper (the package's default is 0.8).
"""

import collections
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from verifier.core.errors import BundleError
from verifier.core.fastpath import interpreter_class

DEFAULT_MODEL_DIR = Path(__file__).with_name("mtcnn")
RECORD_FILE = "weights.json"
NETS = ("pnet", "rnet", "onet")
WINDOW = 12  # PNet's receptive field, px, at each pyramid level
STRIDE = 2  # PNet's output step, px
NMS_PNET_SCALE, NMS_PNET_ALL, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
LANDMARK_NAMES = ("left eye", "right eye", "nose", "left mouth corner", "right mouth corner")


@dataclass(frozen=True, eq=False)
class Face:
    """One detection in the input image's pixels: box (x0, y0, x1, y1), score, landmarks.

    landmarks is a read-only (5, 2) array of (x, y) in LANDMARK_NAMES order; "left" is the
    smaller x in the image. eq=False: faces compare by identity (an array has no truth value).
    """

    box: tuple
    score: float
    landmarks: np.ndarray

    def to_dict(self):
        """JSON-friendly: pixels to 0.1 px, the score to 4 decimals."""
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]}


def load_models(model_dir):
    """{net: flatbuffer bytes}, each file's sha256 checked against weights.json, else a BundleError."""
    model_dir = Path(model_dir)
    record_path = model_dir / RECORD_FILE
    try:
        nets = json.loads(record_path.read_text())["nets"]
        expected = {net: str(nets[net]["sha256"]) for net in NETS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"face detector: {record_path} is missing or unreadable ({exc!r})") from None
    models = {}
    for net in NETS:
        path = model_dir / f"{net}.tflite"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"face detector: cannot read {path}: {exc.strerror}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected[net]:
            raise BundleError(f"face detector: {path} is corrupt or substituted: sha256 {actual[:16]}... but "
                              f"{RECORD_FILE} records {expected[net][:16]}... (python -m training.mtcnn_export "
                              "rebuilds the files)")
        models[net] = data
    return models


def provenance(model_dir=DEFAULT_MODEL_DIR):
    """The detector's source, licence and file hashes (from weights.json), for bundle.json's recipe."""
    record = json.loads((Path(model_dir) / RECORD_FILE).read_text())
    return {"detector": "MTCNN (Zhang et al. 2016)", "source": record["source"], "licence": record["licence"],
            "files": {f"{net}.tflite": record["nets"][net]["sha256"] for net in NETS}}


class _Net:
    """One net's interpreters for one thread, one per input shape, so that no call re-plans one.

    Resizing an interpreter's input re-allocates and re-plans it, which cost as much as PNet's
    run on a small image. PNet sees one shape per pyramid level; RNet's and ONet's batches
    (the candidate boxes) are padded up to a power of two, so a handful of shapes cover them.
    At most MAX_SHAPES are kept, the least recently used dropped.
    """

    MAX_SHAPES = 32

    def __init__(self, interpreter_cls, data, name, pad_batch=False):
        self.interpreter_cls, self.data, self.name, self.pad_batch = interpreter_cls, data, name, pad_batch
        self.by_shape = collections.OrderedDict()
        self.input, self.output = self._load()[1:]  # fail here, at construction, on a broken flatbuffer

    def _load(self):
        try:
            interp = self.interpreter_cls(model_content=self.data, num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"face detector: {self.name}.tflite could not be loaded: {exc}") from None
        return interp, interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def _for_shape(self, shape):
        interp = self.by_shape.pop(shape, None)
        if interp is None:
            interp = self._load()[0]
            interp.resize_tensor_input(self.input, shape, strict=True)
            interp.allocate_tensors()
            while len(self.by_shape) >= self.MAX_SHAPES:
                self.by_shape.popitem(last=False)
        self.by_shape[shape] = interp
        return interp

    def __call__(self, batch):
        """float32 batch -> the net's concatenated outputs (a copy)."""
        count = len(batch)
        if self.pad_batch and count & (count - 1):
            padding = np.zeros(((1 << count.bit_length()) - count,) + batch.shape[1:], np.float32)
            batch = np.concatenate([batch, padding])
        interp = self._for_shape(batch.shape)
        interp.set_tensor(self.input, batch)
        interp.invoke()
        return interp.get_tensor(self.output)[:count].copy()


class FaceDetector:
    """MTCNN over LiteRT, thread-safe (interpreters per thread, one CPU thread each).

    border pads the image by that fraction of its longer side with its own edge pixels
    before detection, so that faces filling the frame (tight crops) fit PNet's largest
    window; coordinates are still returned in the original image's frame.
    """

    def __init__(self, model_dir=DEFAULT_MODEL_DIR, *, min_face_size=20, thresholds=(0.6, 0.7, 0.7),
                 scale_factor=0.709, border=0.0):
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities (PNet, RNet, ONet), not {thresholds}")
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), not {scale_factor}")
        if not min_face_size > 0:
            raise ValueError(f"min_face_size must be positive, not {min_face_size}")
        if not border >= 0.0:
            raise ValueError(f"border must be a non-negative fraction of the longer side, not {border}")
        self.min_face_size, self.thresholds = min_face_size, thresholds
        self.scale_factor, self.border = scale_factor, border
        self._models = load_models(model_dir)
        self._interpreter_cls = interpreter_class()
        self._local = threading.local()
        self._nets()  # fail here, at construction, on a flatbuffer the interpreter refuses

    def _nets(self):
        nets = getattr(self._local, "nets", None)
        if nets is None:
            nets = self._local.nets = {name: _Net(self._interpreter_cls, data, name, pad_batch=name != "pnet")
                                       for name, data in self._models.items()}
        return nets

    def detect(self, image):
        """Faces in a uint8 HxWx3 RGB (or HxW / HxWx1 grey) image, best ONet score first."""
        normalized, offset = self._prepare(image)
        nets = self._nets()
        boxes = self._propose(nets["pnet"], normalized)
        if len(boxes):
            boxes = self._refine(nets["rnet"], normalized, boxes)
        if not len(boxes):
            return []
        boxes, landmarks = self._output(nets["onet"], normalized, boxes)
        return _faces(boxes, landmarks, offset, np.shape(image)[:2])

    def _prepare(self, image):
        """(normalised float32 HxWx3 with the border added, border width in px)."""
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"detect takes a uint8 image, not {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"detect takes an HxWx3 RGB or HxW grey image, not shape {image.shape}")
        normalized = (image.astype(np.float32) - 127.5) * np.float32(1 / 128)
        if normalized.ndim == 2:
            normalized = np.repeat(normalized[:, :, None], 3, axis=2)
        pad = int(round(self.border * max(image.shape[:2])))
        if pad:
            normalized = cv2.copyMakeBorder(normalized, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        return normalized, pad

    def _propose(self, pnet, normalized):
        """PNet over the pyramid -> squared candidate boxes (N, 5): x0, y0, x1, y1, score."""
        height, width = normalized.shape[:2]
        per_scale = []
        for scale in pyramid(height, width, self.min_face_size, self.scale_factor):
            size = (int(width * scale), int(height * scale))
            level = cv2.resize(normalized, size, interpolation=cv2.INTER_AREA)
            out = pnet(level[None])[0]
            boxes = _windows(out, scale, self.thresholds[0])
            per_scale.append(boxes[nms(boxes, NMS_PNET_SCALE)])
        boxes = _best_first(np.concatenate(per_scale)) if per_scale else np.zeros((0, 5))
        return square(boxes[nms(boxes, NMS_PNET_ALL)])

    def _refine(self, rnet, normalized, boxes):
        """RNet on 24 x 24 patches: rescored, regressed, thresholded, NMS, squared."""
        out = rnet(crop_and_resize(normalized, boxes, 24))
        boxes = regress(boxes, out[:, :4], out[:, 5])
        boxes = _best_first(boxes[boxes[:, 4] > self.thresholds[1]])
        return square(boxes[nms(boxes, NMS_RNET)])

    def _output(self, onet, normalized, boxes):
        """ONet on 48 x 48 patches: final boxes (N, 5) and landmarks (N, 5, 2), best first."""
        out = onet(crop_and_resize(normalized, boxes, 48))
        landmarks = place_landmarks(boxes, out[:, 4:14])
        boxes = regress(boxes, out[:, :4], out[:, 15])
        keep = boxes[:, 4] > self.thresholds[2]
        boxes, landmarks = boxes[keep], landmarks[keep]
        order = _score_order(boxes)
        boxes, landmarks = boxes[order], landmarks[order]
        keep = nms(boxes, NMS_ONET, by_min_area=True)
        return boxes[keep], landmarks[keep]


def pyramid(height, width, min_face_size, scale_factor):
    """Scales (12 / min_face_size) * scale_factor**k whose short side stays >= 12 px.

    The package counts levels from the image size alone, so other min_face_size values give it
    too few or too small levels; at the default of 20 this rule gives the same levels (one
    more, of >= 12 px, for a few image sizes).
    """
    base, scales = WINDOW / min_face_size, []
    for k in itertools.count():
        scale = base * scale_factor ** k  # as the package computes it, so sizes truncate alike
        if min(int(height * scale), int(width * scale)) < WINDOW:
            return scales
        scales.append(scale)


def _windows(out, scale, threshold):
    """PNet map -> regressed windows scoring above threshold, in the input image's frame.

    A cell's window spans STRIDE * i + 1 .. STRIDE * i + WINDOW and its offsets are in units of
    that span (WINDOW - 1), as the package has it.
    """
    ys, xs = np.nonzero(out[:, :, 5] > threshold)
    reg = out[ys, xs, :4].astype(np.float64) * (WINDOW - 1)
    x0, y0 = xs * STRIDE + 1, ys * STRIDE + 1
    x1, y1 = xs * STRIDE + WINDOW, ys * STRIDE + WINDOW
    boxes = np.stack([x0 + reg[:, 0], y0 + reg[:, 1], x1 + reg[:, 2], y1 + reg[:, 3]], axis=1) / scale
    return _best_first(np.column_stack([boxes, out[ys, xs, 5]]))


def _score_order(boxes):
    """Indices by descending score, ties broken as the package's reversed argsort breaks them."""
    return np.argsort(boxes[:, 4])[::-1]


def _best_first(boxes):
    """Rows sorted by descending score."""
    return boxes[_score_order(boxes)]


def nms(boxes, threshold, by_min_area=False, block=1024):
    """Mask of boxes kept, for boxes sorted best first (the package's one-pass rule, see above).

    Overlap is intersection over union, or over the smaller box's area when by_min_area. Rows
    go block at a time, so memory stays block x N however many proposals a large image makes.
    """
    dropped = np.zeros(len(boxes), bool)
    later = np.arange(len(boxes))
    for start in range(0, len(boxes), block):
        overlap = _overlap(boxes[start:start + block], boxes, by_min_area)
        after = later > later[start:start + block, None]
        dropped |= ((overlap > threshold) & after).any(axis=0)
    return ~dropped


def _overlap(a, b, by_min_area):
    """(len(a), len(b)) intersection over union (or over the smaller area), areas without the +1."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = (np.maximum(0.0, np.minimum(a[:, None, 2], b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0]))
             * np.maximum(0.0, np.minimum(a[:, None, 3], b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1])))
    denom = np.minimum(area_a[:, None], area_b) if by_min_area else area_a[:, None] + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / denom


def square(boxes):
    """Each box grown to a square of its longer side about its centre."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) * 0.5
    boxes[:, 1] += (h - side) * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress(boxes, offsets, scores):
    """Boxes moved by offsets in units of their (w + 1, h + 1), with new scores (the package's convention)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    moved = boxes[:, :4] + offsets * np.stack([w, h, w, h], axis=1)
    return np.column_stack([moved, scores])


def place_landmarks(boxes, marks):
    """ONet's box-relative landmarks (5 x then 5 y) -> (N, 5, 2) image (x, y), as the package places them."""
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1
    xs = w * marks[:, :5] + boxes[:, 0:1] - 1
    ys = h * marks[:, 5:] + boxes[:, 1:2] - 1
    return np.stack([xs, ys], axis=2)


def crop_and_resize(image, boxes, size):
    """size x size bilinear samples of each box, 0 outside the image: tf.image.crop_and_resize as the package calls it.

    The package normalises box corners by the image size (not size - 1), which this keeps. The
    four neighbours come from one `np.take` on the flattened image: a quarter of the time of
    indexing it with broadcast row and column arrays.
    """
    height, width = image.shape[:2]
    steps = np.arange(size) / (size - 1)
    ys = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps) * ((height - 1) / height)
    xs = (boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps) * ((width - 1) / width)
    y0, y1, fy, in_y = _axis_samples(ys, height)
    x0, x1, fx, in_x = _axis_samples(xs, width)
    rows = np.stack([y0, y1])[:, :, :, None] * width  # (2, N, size, 1): top and bottom rows
    cols = np.stack([x0, x1])[:, :, None, :]  # (2, N, 1, size): left and right columns
    corners = np.take(image.reshape(height * width, -1), rows[:, None] + cols[None], axis=0)
    (top_left, top_right), (bottom_left, bottom_right) = corners
    fx = fx[:, None, :, None]
    top = top_left + (top_right - top_left) * fx
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    patches = top + (bottom - top) * fy[:, :, None, None]
    patches *= (in_y[:, :, None] & in_x[:, None, :])[..., None]
    return np.ascontiguousarray(patches, dtype=np.float32)


def _axis_samples(coords, n):
    """Bilinear neighbours, weight of the upper one and in-range mask for sample coordinates on an axis of n px."""
    inside = (coords >= 0) & (coords <= n - 1)
    clipped = np.clip(coords, 0, n - 1)
    low = np.floor(clipped)
    lower = low.astype(np.intp)
    return lower, np.minimum(lower + 1, n - 1), (clipped - low).astype(np.float32), inside


def _faces(boxes, landmarks, offset, shape):
    """Faces in the original frame: border removed, boxes clipped to the image as the package clips them."""
    height, width = shape
    faces = []
    for box, marks in zip(boxes, landmarks):
        x0, x1 = np.clip(box[[0, 2]] - offset, 0, width - 1)
        y0, y1 = np.clip(box[[1, 3]] - offset, 0, height - 1)
        points = (marks - offset).astype(np.float64)
        points.setflags(write=False)
        faces.append(Face((float(x0), float(y0), float(x1), float(y1)), float(box[4]), points))
    return faces
