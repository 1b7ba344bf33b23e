"""Image decoding: formats, limits checked before decoding, truncation, alpha and depth."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from tests.synthetic import png_bytes
from verifier.core.errors import CorruptImage, ImageTooLarge, ImageTooSmall, UnsupportedImage
from verifier.core.images import decode_image, header_size, read_image, sniff_format


def _gray(height=40, width=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def png_bomb(width=20_000, height=20_000):
    """A valid PNG header claiming a huge greyscale image, with a tiny (compressed) body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ext,channels", [(".png", 1), (".jpg", 1), (".bmp", 1), (".pgm", 1),
                                          (".tiff", 1), (".webp", 3)])  # WebP stores colour only
def test_decodes_common_formats(ext, channels):
    ok, buf = cv2.imencode(ext, _gray())
    assert ok
    image = decode_image(buf.tobytes())
    assert image.dtype == np.uint8
    assert image.shape == (40, 30, channels)


def test_header_size_matches_real_dimensions():
    for ext in (".png", ".jpg", ".bmp", ".pgm", ".webp", ".tiff"):  # TIFF too: Pillow reads every header
        data = cv2.imencode(ext, _gray(33, 57))[1].tobytes()
        assert header_size(data, sniff_format(data)) == (57, 33), ext


def test_colour_is_returned_as_rgb():
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[:, :, 0] = 255  # blue in OpenCV's order
    image = decode_image(png_bytes(bgr))
    assert image.shape == (20, 20, 3)
    assert image[0, 0].tolist() == [0, 0, 255]


def test_transparent_pixels_become_white_and_16_bit_is_scaled():
    rgba = np.zeros((20, 20, 4), np.uint8)
    assert decode_image(png_bytes(rgba))[0, 0].tolist() == [255, 255, 255]
    deep = np.full((20, 20), 65535, np.uint16)
    assert decode_image(png_bytes(deep)).max() == 255


def test_not_an_image_is_unsupported():
    with pytest.raises(UnsupportedImage):
        decode_image(b"%PDF-1.4 definitely not an image")


def test_empty_and_truncated_data_are_corrupt():
    with pytest.raises(CorruptImage, match="empty"):
        decode_image(b"")
    data = png_bytes(_gray())
    with pytest.raises(CorruptImage, match="truncated"):
        decode_image(data[: len(data) // 2])
    jpeg = cv2.imencode(".jpg", _gray(200, 200))[1].tobytes()
    with pytest.raises(CorruptImage):
        decode_image(jpeg[: len(jpeg) // 2])


def test_pixel_bomb_is_refused_from_its_header():
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        decode_image(png_bomb())


def test_byte_limit_and_minimum_side():
    data = png_bytes(_gray())
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_bytes=len(data) - 1)
    with pytest.raises(ImageTooSmall):
        decode_image(png_bytes(np.zeros((1, 1), np.uint8)))


def test_read_image_reports_missing_file(tmp_path):
    with pytest.raises(CorruptImage, match="cannot read"):
        read_image(tmp_path / "nope.png")
    path = tmp_path / "ok.png"
    path.write_bytes(png_bytes(_gray()))
    assert read_image(path).shape == (40, 30, 1)
