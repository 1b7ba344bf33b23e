"""Preprocessing profiles: the one place that turns a decoded image into model input.

Training, calibration and serving all call `preprocess`, so what the model sees at
serving time is exactly what it saw in training. A profile's parameters are stored in
the bundle, so a bundle carries its own preprocessing.
"""

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Profile:
    """How to turn an image into a HxWxC float32 model input."""

    name: str
    height: int
    width: int
    channels: int = 1
    # "standardize": per-image zero mean, unit variance; "unit": [0, 1]; "none": 0-255 as
    # they are (a pretrained tower that normalises inside itself)
    normalize: str = "standardize"
    # how the image meets the target aspect: "crop" the longer side (faces, tight crops), or
    # "letterbox" (products: the whole object kept, padded with mid-grey)
    fit: str = "crop"
    ink_crop: bool = False  # signatures: crop to the ink's bounding box, pad to aspect
    # signatures: flatten the paper (uneven light, scanner shading, texture) and segment the
    # ink before the crop, paper made plain white and ink contrast stretched (`clean_ink`)
    clean_ink: bool = False
    invert: bool = False  # make the foreground bright (ink on paper -> high values)
    allow_flip: bool = True  # whether horizontal flips are a valid augmentation
    # faces: "mtcnn" detects the face and aligns its five landmarks onto the chip
    # (verifier.core.acquisition) before preprocessing; None takes the image as it is
    detector: str | None = None
    detect_border: float = 0.0  # replicated border (share of the longer side) added before detection

    @property
    def input_shape(self):
        return (self.height, self.width, self.channels)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        fields = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**fields)


PROFILES = {
    # photos of faces, full frames or tight crops: the pretrained face tower's aligned chip
    "face": Profile("face", height=150, width=150, channels=3, normalize="none", detector="mtcnn",
                    detect_border=0.2),
    # face chips already aligned like the face profile's (no detection)
    "face-chip": Profile("face-chip", height=150, width=150, channels=3, normalize="none"),
    # the small CNN from scratch on roughly framed grey faces (ORL-like), no detection
    "face-small": Profile("face-small", height=56, width=46),
    # scanned signatures: ink cleaned and cropped, aspect kept, ink bright on black, never mirrored
    "signature": Profile("signature", height=64, width=160, normalize="unit", ink_crop=True,
                         clean_ink=True, invert=True, allow_flip=False),
    # colour photos of products or anything else: the whole picture kept (letterboxed) at a size
    # a pretrained tower sees objects at
    "product": Profile("product", height=160, width=160, channels=3, normalize="unit", fit="letterbox"),
    # greyscale photos: the same, one channel
    "product-grey": Profile("product-grey", height=96, width=96, normalize="unit", fit="letterbox"),
    # thumbnails (CIFAR-like, about 32 px): kept at their own size (the generic tower upsamples
    # them inside the model for its backbone)
    "small-colour": Profile("small-colour", height=32, width=32, channels=3, normalize="unit", fit="letterbox"),
    # grey thumbnails (Fashion-MNIST-like, 28 px); not mirrored: grey thumbnails are as often
    # symbols or characters, which a mirror makes into others
    "small-grey": Profile("small-grey", height=28, width=28, normalize="unit", allow_flip=False),
}
FITS = ("crop", "letterbox")


def get_profile(name):
    """The named built-in profile, or a ValueError listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


def _to_channels(image, channels):
    """uint8 HxWxC with C in (1, 3) converted to the profile's channel count."""
    if image.ndim == 2:
        image = image[:, :, None]
    if channels == 1 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image


def _centre_crop_to_aspect(image, height, width):
    """Crop the longer side so the aspect ratio matches the target before resizing."""
    rows, cols = image.shape[:2]
    target = width / height
    if cols / rows > target:
        keep = max(1, round(rows * target))
        start = (cols - keep) // 2
        return image[:, start:start + keep]
    keep = max(1, round(cols / target))
    start = (rows - keep) // 2
    return image[start:start + keep, :]


def letterbox(image, height, width, fill=128):
    """Pad the shorter side with mid-grey so the whole image meets the target aspect."""
    rows, cols = image.shape[:2]
    target = width / height
    if cols / rows < target:
        extra = round(rows * target) - cols
        borders = (0, 0, extra // 2, extra - extra // 2)
    else:
        extra = round(cols / target) - rows
        borders = (extra // 2, extra - extra // 2, 0, 0)
    padded = cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=(fill,) * 4)
    return padded.reshape(padded.shape[:2] + image.shape[2:])


def ink_crop(gray, height, width, margin=0.05):
    """Crop a signature (dark ink on light paper) to its ink and pad it to the target aspect.

    Ink is found with Otsu's threshold; an image with no ink is returned whole. Padding uses
    the paper colour (the image's median) so the signature keeps its proportions.
    """
    _, mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    points = cv2.findNonZero(mask)
    if points is None or gray.max() - gray.min() < 16:
        return gray
    x, y, w, h = cv2.boundingRect(points)
    pad = int(round(margin * max(w, h)))
    rows, cols = gray.shape
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(cols, x + w + pad), min(rows, y + h + pad)
    return letterbox(gray[y0:y1, x0:x1], height, width, fill=int(np.median(gray)))


def flatten_paper(gray, stroke=15):
    """Divide out the paper's own brightness: a grey closing wider than any stroke removes
    the ink and leaves the paper (texture, uneven light, scanner shading), which maps to 255."""
    size = max(3, min(stroke, min(gray.shape) // 2 * 2 + 1))
    paper = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    paper = cv2.GaussianBlur(paper, (0, 0), size / 2)
    return np.clip(gray.astype(np.float32) * 255.0 / np.maximum(paper.astype(np.float32), 1.0), 0, 255)


def segment_ink(flat, min_area_share=2e-5, min_darkness=24.0):
    """Ink mask of a flattened page: Otsu's threshold on a lightly blurred copy, kept only where
    the ink is clearly darker than the paper, and specks (scanner dust, paper fibres) dropped."""
    blurred = cv2.GaussianBlur(flat.astype(np.uint8), (3, 3), 0)
    level, mask = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    mask[blurred > 255.0 - min_darkness] = 0  # a blank page: Otsu splits the paper's own noise
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= max(3, min_area_share * mask.size))
    keep = keep[keep > 0]  # 0 is the background
    return np.isin(labels, keep)


def clean_ink(gray):
    """A scan -> plain white paper with the ink alone on it, the ink's darkness stretched so
    that its darkest tenth is black: pens, scanners and paper no longer change the picture."""
    flat = flatten_paper(gray)
    mask = segment_ink(flat)
    if not mask.any():
        return np.full(gray.shape, 255, np.uint8)
    darkness = 255.0 - flat
    full = max(float(np.percentile(darkness[mask], 90)), 1.0)
    ink = 255.0 - np.clip(darkness * (255.0 / full), 0, 255)
    return np.where(mask, ink, 255.0).astype(np.uint8)


def preprocess(image, profile):
    """uint8 HxWxC (or HxW) image -> float32 array of shape `profile.input_shape`."""
    image = _to_channels(np.asarray(image, dtype=np.uint8), profile.channels)
    if profile.ink_crop:
        gray = clean_ink(image[:, :, 0]) if profile.clean_ink else image[:, :, 0]
        image = ink_crop(gray, profile.height, profile.width)[:, :, None]
    elif profile.fit == "letterbox":
        image = letterbox(image, profile.height, profile.width)
    else:
        image = _centre_crop_to_aspect(image, profile.height, profile.width)
    resized = cv2.resize(image, (profile.width, profile.height), interpolation=cv2.INTER_AREA)
    resized = resized.reshape(profile.input_shape).astype(np.float32)
    if profile.normalize == "none":
        return 255.0 - resized if profile.invert else resized
    resized /= 255.0
    if profile.invert:
        resized = 1.0 - resized
    if profile.normalize == "standardize":
        resized = (resized - resized.mean()) / max(float(resized.std()), 1e-3)
    return resized


def preprocess_batch(images, profile):
    """A list of decoded images -> one float32 batch of shape (N, H, W, C)."""
    out = np.empty((len(images),) + profile.input_shape, dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess(image, profile)
    return out
