"""Decode image bytes or files into uint8 arrays, refusing bad input before it costs much.

Limits are checked in order of cost: byte count, then the header (read by Pillow's lazy
open, which parses only the header: size and mode, so a decompression bomb or a format
Pillow cannot describe is refused without being decoded), then Pillow's `verify` of the
file's structure (PNG chunk lengths and CRCs), then the decode itself (OpenCV, with its own
pixel cap as a backstop), then a check that the data was complete.
"""

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from verifier.core.errors import CorruptImage, ImageTooLarge, ImageTooSmall, UnsupportedImage

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 4_000_000  # one image, as its header states it: a few MP, far more than any profile's input
MIN_SIDE = 8
OPENCV_MAX_PIXELS = 1 << 25  # OpenCV's own cap (33.5 MP): a backstop for any decode that skips `probe`

# OpenCV reads its cap once, when cv2 loads: this module sets it before its own import of cv2,
# and `verifier.settings` (the first module the service and the CLI import) imports this one.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_MAX_PIXELS))
import cv2  # noqa: E402

# Pillow warns (once per place) about each broken tag it skips; a header from a client is expected to be broken.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "tiff": "TIFF",
                   "webp": "WEBP", "pnm": "PPM"}
_REDUCED_JPEG = {8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
                 4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                 2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2)}


@dataclass(frozen=True)
class Header:
    """What an image's header says, read without decoding it."""

    fmt: str
    width: int
    height: int
    mode: str  # Pillow's mode: "L", "RGB", "RGBA", "I;16", "F", ...

    @property
    def pixels(self):
        return self.width * self.height


def sniff_format(data):
    """Name the image format from its magic bytes, or None if it is not one we read."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "pnm"
    return None


def read_header(data, fmt, max_pixels=None):
    """The `Header` of `data` in format `fmt`, parsed by Pillow; over `max_pixels` ImageTooLarge, else the
    file's structure is verified by Pillow too; CorruptImage when it cannot be read."""
    Image.init()
    factory = Image.OPEN[_PILLOW_FORMATS[fmt]][0]  # what Image.open calls, less its bomb check: ours is lower
    # Any failure to parse untrusted bytes is the sender's, whatever Pillow raises for it.
    try:
        image = factory(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise CorruptImage(f"{fmt} header cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    with image:
        header = Header(fmt, int(image.size[0]), int(image.size[1]), image.mode)
        if max_pixels is not None and header.pixels > max_pixels:
            raise ImageTooLarge(f"image is {header.width}x{header.height} pixels; the limit is {max_pixels} pixels")
        try:
            image.verify()  # PNG: every chunk's length and CRC, so OpenCV never sees a chunk claiming GiBs
        except Exception as exc:  # noqa: BLE001
            raise CorruptImage(f"{fmt} data is truncated or broken ({type(exc).__name__}: "
                               f"{str(exc)[:120]})") from None
    return header


def header_size(data, fmt):
    """(width, height) read from the header without decoding."""
    header = read_header(data, fmt)
    return header.width, header.height


def probe(data, *, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS):
    """The `Header` of image bytes after the byte and pixel limits, without decoding; raises a VerifierError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("decode_image takes bytes; use read_image for a path")
    if not data:
        raise CorruptImage("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    fmt = sniff_format(bytes(data[:16]))
    if fmt is None:
        raise UnsupportedImage("not an image we can read (expected PNG, JPEG, BMP, GIF, TIFF, WebP or PGM/PPM)")
    return read_header(data, fmt, max_pixels)


def _is_complete(data, fmt):
    """Catch truncation that decoders forgive: a PNG must end in IEND, a JPEG hold an EOI."""
    if fmt == "png":
        return b"IEND" in data[-64:]
    if fmt == "jpeg":
        return b"\xff\xd9" in data[-1024:]
    return True


def _to_uint8(image):
    """Bring 16-bit or float data to uint8 so every later step sees one dtype (no float copies)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        image >>= 8
        return image.astype(np.uint8)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)


def _to_rgb_or_gray(image):
    """HxWx1 grey or HxWx3 RGB; alpha is composited on white (transparent = background)."""
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.uint16)
        mixed = image[:, :, :3] * alpha + 255 * (255 - alpha) + 127  # <= 65152: fits uint16
        image = (mixed // 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _reduction(header, min_side_wanted):
    """1, 2, 4 or 8: the largest factor that keeps the image's shorter side at least `min_side_wanted`."""
    if not min_side_wanted:
        return 1
    return next((factor for factor in (8, 4, 2) if min(header.width, header.height) // factor >= min_side_wanted), 1)


def _decode_flag(header, factor):
    """OpenCV's flag: a JPEG is decoded at 1/factor of its size by the JPEG decoder itself (DCT scaling)."""
    if header.fmt == "jpeg" and factor > 1 and header.mode in ("RGB", "L"):
        colour, grey = _REDUCED_JPEG[factor]
        return grey if header.mode == "L" else colour
    return cv2.IMREAD_UNCHANGED


def _shrink(image, factor):
    """Area-average a decoded image to 1/factor of its size (what a reduced JPEG decode does), HxWxC kept."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return small.reshape(small.shape[:2] + image.shape[2:])


def decode_image(data, *, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, min_side=MIN_SIDE, min_side_wanted=None):
    """Decode image bytes to a uint8 HxWxC array (C = 1 grey or 3 RGB), or raise a VerifierError.

    `min_side_wanted` (pixels): an image at least twice that on its shorter side comes back at
    1/2, 1/4 or 1/8 of its size (a JPEG decoded so, other formats area-averaged right after
    decoding), its shorter side still at least that long: only what the model can use is kept.
    """
    header = probe(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if min(header.width, header.height) < min_side:
        raise ImageTooSmall(f"image is {header.width}x{header.height} pixels; each side must be at least {min_side}")
    data = bytes(data)
    if not _is_complete(data, header.fmt):
        raise CorruptImage(f"{header.fmt} data is truncated")
    factor = _reduction(header, min_side_wanted)
    flag = _decode_flag(header, factor)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as exc:  # OpenCV's own limits or a decoder failure: the sender's data, not a fault
        raise CorruptImage(f"{header.fmt} data could not be decoded ({str(exc).strip()[-120:]})") from None
    if image is None or image.size == 0:
        raise CorruptImage(f"{header.fmt} data could not be decoded")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageTooLarge(f"image is {image.shape[1]}x{image.shape[0]} pixels; the limit is {max_pixels} pixels")
    if min(image.shape[:2]) < min_side:
        raise ImageTooSmall(f"image is {header.width}x{header.height} pixels; each side must be at least {min_side}")
    image = _to_rgb_or_gray(_to_uint8(image))
    if factor > 1 and flag == cv2.IMREAD_UNCHANGED:
        image = _shrink(image, factor)
    return image


def read_image(path, **limits):
    """Read and decode an image file, checking its size on disk before reading it."""
    path = Path(path)
    max_bytes = limits.get("max_bytes", MAX_BYTES)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptImage(f"cannot read {path}: {exc.strerror}") from None
    if size > max_bytes:
        raise ImageTooLarge(f"{path} is {size} bytes; the limit is {max_bytes}")
    return decode_image(path.read_bytes(), **limits)
