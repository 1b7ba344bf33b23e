"""The decode budget (issue 16): every header read before decoding, per-image and per-request pixel
limits, OpenCV's own cap set before cv2 loads, reduced JPEG decodes, and no 500 for hostile bodies.

Hostile files are built here from code: tiny files that claim huge sizes, never committed binaries.
"""

import inspect
import io
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bench.hostile import png_16bit_rgba, png_chunk, tiff_deflate, tiff_deflate_zeros
from tests.synthetic import png_bytes
from verifier.core import images
from verifier.core.errors import CorruptImage, ImageTooLarge
from verifier.core.images import decode_image, probe
from verifier.web.app import create_app
def png_chunk_claiming_gib(width=64, height=48):
    """A small valid PNG whose IDAT length field claims 3.9 GB (fuzz finding: OpenCV allocated it)."""
    data = bytearray(png_16bit_rgba(width, height))
    data[33:37] = struct.pack(">I", 0xEB001E6C)
    return bytes(data)


def pnm_bad_size():
    """A PGM header whose width is not a number."""
    return b"P5\nabc 12\n255\n" + bytes(64)


# -- the decoder ------------------------------------------------------------------------------

def test_deflate_tiff_claiming_268_megapixels_is_refused_from_its_header():
    with pytest.raises(ImageTooLarge, match="16384x16384"):
        decode_image(tiff_deflate(16384, 16384))


def test_16_bit_rgba_png_of_40_megapixels_is_over_the_per_image_limit():
    data = png_16bit_rgba(8000, 5000)
    assert len(data) < 400_000
    with pytest.raises(ImageTooLarge, match="8000x5000"):
        decode_image(data)


def test_float_rgba_tiff_is_refused_before_decoding():
    with pytest.raises(CorruptImage, match="tiff header"):
        decode_image(tiff_deflate(5000, 5000, bits=32, samples=4, sample_format=3))


def test_pnm_header_with_a_non_numeric_size_is_corrupt():
    with pytest.raises(CorruptImage, match="pnm header"):
        decode_image(pnm_bad_size())


def test_opencv_errors_are_the_senders_not_a_crash(monkeypatch):
    def refuse(*_):
        raise cv2.error("imdecode_: image size is too big")
    monkeypatch.setattr(cv2, "imdecode", refuse)
    with pytest.raises(CorruptImage, match="could not be decoded"):
        decode_image(png_bytes(np.zeros((20, 20), np.uint8)))


def test_16_bit_and_float_within_the_limit_still_decode_to_uint8():
    deep = decode_image(png_16bit_rgba(64, 48))
    assert deep.dtype == np.uint8 and deep.shape == (48, 64, 3)
    assert deep.max() == 255  # transparent zeros composite on white
    flat = decode_image(tiff_deflate_zeros(40, 30, bits=32, sample_format=3))
    assert flat.dtype == np.uint8 and flat.shape == (30, 40, 1)


def test_large_jpeg_decodes_at_reduced_size_when_asked():
    photo = (np.random.default_rng(0).random((1600, 2000, 3)) * 255).astype(np.uint8)
    data = cv2.imencode(".jpg", photo)[1].tobytes()
    assert decode_image(data).shape == (1600, 2000, 3)
    assert decode_image(data, min_side_wanted=400).shape == (400, 500, 3)  # 1/4: shorter side still >= 400
    assert decode_image(data, min_side_wanted=1000).shape == (1600, 2000, 3)  # no factor of 2 keeps 1000


def test_other_formats_are_shrunk_right_after_decoding_when_asked():
    grey = (np.random.default_rng(0).random((900, 1200)) * 255).astype(np.uint8)
    assert decode_image(png_bytes(grey), min_side_wanted=200).shape == (225, 300, 1)  # 1/4
    assert decode_image(png_bytes(grey), min_side_wanted=500).shape == (900, 1200, 1)


def test_probe_reads_the_header_only():
    header = probe(tiff_deflate(3000, 1000))  # its body is a stub: a decode would fail
    assert (header.fmt, header.width, header.height, header.mode) == ("tiff", 3000, 1000, "L")


_PEAK = """
import resource, struct, zlib
from verifier.core.images import decode_image
{builders}
data = {call}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
try:
    decode_image(data)
except Exception as exc:
    print(type(exc).__name__)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _peak_rss_mib(call):
    """(exception name, peak RSS in MiB before the decode, after it) of decoding `call`'s file in a fresh process."""
    builders = "\n".join(inspect.getsource(f) for f in (tiff_deflate, tiff_deflate_zeros, png_chunk,
                                                         png_16bit_rgba, png_chunk_claiming_gib))
    out = subprocess.run([sys.executable, "-c", _PEAK.format(builders=builders, call=call)],
                         capture_output=True, text=True, timeout=120, check=True)
    refused, before, after = out.stdout.split()
    return refused, int(before), int(after)


def test_the_issues_268_megapixel_tiff_is_refused_within_a_few_mib():
    """Before: it decoded to 558 MiB (peak RSS 557 MiB) before being refused; now the header refuses it."""
    refused, before, after = _peak_rss_mib("tiff_deflate_zeros(16384, 16384)")
    assert refused == "ImageTooLarge"
    assert after - before < 32, (before, after)


def test_png_chunk_claiming_gibibytes_is_refused_before_opencv_allocates_it():
    """Before: 2.4 s and a peak RSS of 3.8 GiB for this 7 KB file, then a 422; now Pillow's chunk check refuses it."""
    with pytest.raises(CorruptImage, match="truncated or broken"):
        decode_image(png_chunk_claiming_gib())
    refused, before, after = _peak_rss_mib("png_chunk_claiming_gib(1000, 1000)")
    assert refused == "CorruptImage" and after - before < 32, (before, after)


def test_opencv_cap_is_set_before_cv2_first_loads_in_every_entry_point():
    probe_code = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cv2" and not seen:
            seen.append(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"))
        return None
sys.meta_path.insert(0, Watch())
import importlib
importlib.import_module(sys.argv[1])
print(seen[0] if seen else "not-imported")
"""
    for entry in ("verifier.web.app", "verifier.web.gunicorn_conf", "verifier.cli.main"):
        out = subprocess.run([sys.executable, "-c", probe_code, entry], capture_output=True, text=True,
                             timeout=120, check=True)
        assert out.stdout.strip() in (str(images.OPENCV_MAX_PIXELS), "not-imported"), (entry, out.stdout)


# -- the web layer ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(calibrated_bundle):
    app = create_app({"VERIFIER_BUNDLE": str(calibrated_bundle), "MAX_REQUEST_PIXELS": 10_000})
    return app.test_client()


def _good():
    return png_bytes((np.random.default_rng(0).random((56, 46)) * 255).astype(np.uint8))


def _error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    return response.get_json()["error"]


def test_deeply_nested_json_is_a_400(client):
    response = client.post("/v1/verify", data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert _error(response, 400)["code"] == "bad_json"
    nested = '{"image_a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert _error(client.post("/v1/verify", data=nested, content_type="application/json"), 400)["code"] == "bad_json"


def test_a_4000_digit_threshold_is_a_400(client):
    body = '{"image_a": "", "image_b": "", "threshold": ' + "9" * 4000 + "}"
    error = _error(client.post("/v1/verify", data=body, content_type="application/json"), 400)
    assert error["code"] == "bad_json" and "4000 digits" in error["message"]


def test_pnm_with_a_non_numeric_size_is_a_422_naming_the_field(client):
    data = {"image_a": (io.BytesIO(pnm_bad_size()), "a.pgm"), "image_b": (io.BytesIO(_good()), "b.png")}
    error = _error(client.post("/v1/verify", data=data, content_type="multipart/form-data"), 422)
    assert error["code"] == "corrupt_image" and error["message"].startswith("image_a:")


def test_request_pixel_budget_is_checked_before_any_decode(client):
    good = _good()  # 56x46 = 2576 pixels; the test budget of 10,000 holds three, not four
    pairs = [("image_a", good), ("image_b", good)] * 2
    data = {}
    for name, image in pairs:
        data.setdefault(name, []).append((io.BytesIO(image), f"{name}.png"))
    error = _error(client.post("/v1/verify/batch", data=data, content_type="multipart/form-data"), 413)
    assert error["code"] == "request_too_many_pixels" and "10000" in error["message"]
    one = {"image_a": (io.BytesIO(good), "a.png"), "image_b": (io.BytesIO(good), "b.png")}
    assert client.post("/v1/verify", data=one, content_type="multipart/form-data").status_code == 200
