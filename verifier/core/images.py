"""Decode image bytes or files into uint8 arrays, refusing bad input before it costs much.

Limits are checked in order of cost: byte count, then the pixel count read from the
file header (so a decompression bomb is refused without being decoded), then the
decode itself, then a check that the data was complete.
"""

import os
import struct
from pathlib import Path

import numpy as np

from verifier.core.errors import CorruptImage, ImageTooLarge, ImageTooSmall, UnsupportedImage

# OpenCV reads this once, at its first decode; our own header check comes first anyway.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))
import cv2  # noqa: E402

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MIN_SIDE = 8

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


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


def header_size(data, fmt):
    """(width, height) read from the header without decoding, or None when not cheap to read."""
    try:
        if fmt == "png":
            return struct.unpack(">II", data[16:24])
        if fmt == "gif":
            return struct.unpack("<HH", data[6:10])
        if fmt == "bmp":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "pnm":
            return _pnm_size(data)
        if fmt == "webp":
            return _webp_size(data)
    except struct.error:
        raise CorruptImage(f"{fmt} header is truncated") from None
    return None


def _jpeg_size(data):
    """Walk JPEG markers to the first start-of-frame and read its dimensions."""
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            raise CorruptImage("jpeg marker stream is broken")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise CorruptImage("jpeg has no frame header")


def _pnm_size(data):
    """Width and height are the second and third whitespace-separated header tokens."""
    tokens = []
    for line in data[:512].split(b"\n"):
        tokens.extend(line.split(b"#")[0].split())
        if len(tokens) >= 3:
            return int(tokens[1]), int(tokens[2])
    raise CorruptImage("pnm header is truncated")


def _webp_size(data):
    """Dimensions of the three WebP chunk kinds (lossy, lossless, extended)."""
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _is_complete(data, fmt):
    """Catch truncation that decoders forgive: a PNG must end in IEND, a JPEG hold an EOI."""
    if fmt == "png":
        return b"IEND" in data[-64:]
    if fmt == "jpeg":
        return b"\xff\xd9" in data[-1024:]
    return True


def _to_uint8(image):
    """Bring 16-bit or float data to uint8 so every later step sees one dtype."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    scaled = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
    return scaled.astype(np.uint8)


def _to_rgb_or_gray(image):
    """HxWx1 grey or HxWx3 RGB; alpha is composited on white (transparent = background)."""
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        colour = image[:, :, :3].astype(np.float32)
        image = (colour * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data, *, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, min_side=MIN_SIDE):
    """Decode image bytes to a uint8 HxWxC array (C = 1 grey or 3 RGB), or raise a VerifierError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("decode_image takes bytes; use read_image for a path")
    data = bytes(data)
    if not data:
        raise CorruptImage("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImage("not an image we can read (expected PNG, JPEG, BMP, GIF, TIFF, WebP or PGM/PPM)")
    size = header_size(data, fmt)
    if size is not None:
        width, height = size
        if width * height > max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if not _is_complete(data, fmt):
        raise CorruptImage(f"{fmt} data is truncated")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise CorruptImage(f"{fmt} data could not be decoded")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageTooLarge(f"image is {image.shape[1]}x{image.shape[0]} pixels; the limit is {max_pixels} pixels")
    if min(image.shape[:2]) < min_side:
        raise ImageTooSmall(f"image is {image.shape[1]}x{image.shape[0]} pixels; each side must be at least {min_side}")
    return _to_rgb_or_gray(_to_uint8(image))


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
