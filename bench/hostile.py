"""Hostile-request benchmark: a corpus of hostile requests against the real service, from outside.

    python bench/hostile.py [--bundle face=bundles/face] [--workers 2] [--threads 2] [--slow-seconds 10]
                            [--skip quickstart,docker] [--log-dir DIR]

Everything runs on loopback, in this run, against `python -m verifier serve` started in a
subprocess the way a user starts it (gunicorn, the repo's config), over HTTP only (a raw
socket client, one request at a time, every request with a timeout); every phase is bounded.

1. quickstart: the README's quick start (`serve --bundle face=... --port N`, the store a SQLite
   file in a temp dir named by DATABASE_URL, `--create-store` on this first start). Subject s1
   is created and enrolled, then the corpus goes to every route: decompression bombs (a deflate
   TIFF of 268 MP, a 16-bit RGBA PNG of 40 MP, a JPEG and a GIF declaring 65000x65000, a PNG
   chunk claiming 3.9 GB), truncated images, other file types (PDF, ZIP, HTML, SVG with an
   external entity), zero-byte files, a body over the size limit, 5,000 form fields, deeply
   nested JSON, a 4,000-digit number, NaN and Infinity, path-traversal, NUL, 10 KB, SQL-looking
   and unicode subject ids, an unknown modality, made-up HTTP methods, wrong content types,
   huge headers and URLs; then a slow client (one byte a second) while /healthz is polled.
2. docker: the Dockerfile's CMD (`serve --port N --host 0.0.0.0`, DATABASE_URL a SQLite file).
   First it must refuse to start: with no store (a volume not mounted), then with a store and
   no API key. Keys are made with `python -m verifier keys create --name NAME [--scope read]`;
   the service is reached only through 127.0.0.1. The corpus runs without a key (protected
   routes must answer 401, never reach the body), then with the write key; a read key on write
   routes must answer 403. While it runs the store file is moved away (`mv`): store routes must
   answer a clear 503 (no path, no driver text), the process stays up, and it recovers once the
   file is moved back. Then every key is revoked with `keys revoke ID`: the revoked key and no
   key must both answer 401 (revoking the last key never reopens the routes).

FAIL: any 5xx but a documented 503 (JSON error body), an error on a /v1 route without the
JSON error body {"error": {"code", "message"}}, a 2xx body that is not strict JSON, traceback
text in any body, a worker that died (a gunicorn worker pid gone without gunicorn's own
max-requests restart), a peak over the start of the summed worker RSS (from /proc, every
0.2 s) of more than --rss-growth-mb, a protected route that answers without a key, a revoked
key that still works, a valid request that fails after the corpus. A table (request kind ->
status/code per phase) and the RSS figures are printed; the last line is one JSON object;
exit status 1 on any FAIL. Servers are stopped at the end, whatever happens.
"""

import argparse
import base64
import io
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
import zlib
from pathlib import Path

import numpy as np

from bench.serve import ROOT, children, free_port, payload_images, rss_mb, stop, wait_until
from verifier.core.bundle import read_meta
from verifier.core.profiles import Profile
from verifier.settings import DEFAULT_BUNDLE

TIMEOUT = 30  # seconds, every request
DOCUMENTED_503 = {"store_unavailable", "not_ready", "uncalibrated", "bundle_error", "bundle_missing"}
# error codes that mean the app read the body: seen without a key on a protected route, auth came too late
BODY_CODES = {"image_too_large", "request_too_many_pixels", "corrupt_image", "unsupported_media_type", "no_face",
              "empty_image", "bad_json", "bad_base64", "missing_field", "request_too_large", "too_many_images",
              "unknown_modality", "invalid_subject_id", "subject_not_found", "conflict", "forbidden", "unsupported_image",
              "image_too_small"}
TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "/', "site-packages")
PROTECTED_PREFIXES = ("/v1/verify", "/v1/subjects", "/v1/identify", "/metrics")
WRITE_ROUTES = ("POST /v1/subjects", "DELETE /v1/subjects", "POST /v1/subjects/s1/templates")


# -- hostile files, built in code -------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16bit_rgba(width, height):
    """A valid 16-bit RGBA PNG of zeros: a few hundred KB that decode to width*height*8 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(width * 8)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def tiff_deflate(width, height, *, body=b"x\x9c\x03\x00\x00\x00\x00\x01", bits=8, samples=1, sample_format=1):
    """A little-endian deflate TIFF claiming width x height (one strip); the body defaults to a tiny stream."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 8),
               (262, 3, 2 if samples >= 3 else 1), (273, 4, None), (277, 3, samples),
               (278, 4, height), (279, 4, len(body)), (339, 3, sample_format)]
    if samples == 4:
        entries.append((338, 3, 2))  # ExtraSamples: unassociated alpha
    entries.sort()
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = data_offset if value is None else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + b"\x00\x00\x00\x00" + body


def tiff_deflate_zeros(width, height, **kwargs):
    """`tiff_deflate` with a real deflate body of zeros, so the file decodes in full (the bomb)."""
    samples, bits = kwargs.get("samples", 1), kwargs.get("bits", 8)
    compressor = zlib.compressobj(9)
    row = bytes(width * samples * bits // 8)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return tiff_deflate(width, height, body=body, **kwargs)


def jpeg_huge_declared(small_jpeg, width=65000, height=65000):
    """A real small JPEG whose SOF header declares width x height."""
    data = bytearray(small_jpeg)
    i = 2
    while i < len(data) - 9:
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 7] = struct.pack(">H", height)
            data[i + 7:i + 9] = struct.pack(">H", width)
            return bytes(data)
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0] if data[i] == 0xFF else 1
    raise ValueError("no SOF marker")


def gif_bomb(width=65000, height=65000):
    """A tiny GIF whose screen and one frame declare width x height (a few LZW bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = data.index(b",")  # the image descriptor
    data[at + 5:at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def png_chunk_claiming_gib(width=64, height=48):
    data = bytearray(png_16bit_rgba(width, height))
    data[33:37] = struct.pack(">I", 0xEB001E6C)
    return bytes(data)


def other_files():
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", bytes(1_000_000))  # a zip bomb-ish member
    return {
        "pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
               b"trailer<</Root 1 0 R>>\n%%EOF\n",
        "zip": zip_buf.getvalue(),
        "html": b"<!doctype html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>",
        "svg_xxe": b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                   b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><text>&xxe;</text></svg>',
        "zero_byte": b"",
        "random_bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "pnm_bad_size": b"P5\nabc 12\n255\n" + bytes(64),
    }


def hostile_images(face_png, face_jpeg):
    files = {
        "tiff_deflate_268mp": tiff_deflate_zeros(16384, 16384),
        "png_16bit_rgba_40mp": png_16bit_rgba(8000, 5000),
        "jpeg_declares_65000x65000": jpeg_huge_declared(face_jpeg),
        "gif_bomb_65000x65000": gif_bomb(),
        "png_chunk_claims_3.9gb": png_chunk_claiming_gib(1000, 1000),
        "tiff_float_rgba_25mp": tiff_deflate(5000, 5000, bits=32, samples=4, sample_format=3),
        "truncated_png": face_png[:len(face_png) // 2],
        "truncated_jpeg": face_jpeg[:len(face_jpeg) // 2],
    }
    files.update(other_files())
    return files


# -- a raw HTTP client: Content-Length bodies, any method, early answers seen ------------------

def http(port, method, path, body=b"", headers=None, *, timeout=TIMEOUT, raw_head=None):
    """One request on its own connection -> (status, body bytes, seconds); status 0: no answer (with the reason).

    The body goes in 64 KiB pieces; an answer arriving before the body is sent (a 413) stops the sending.
    """
    t0 = time.monotonic()
    headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT", "PATCH"):
        headers.setdefault("Content-Length", str(len(body)))
    head = raw_head or (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                        + "\r\n").encode("latin-1", "replace")
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            try:
                sock.sendall(head)
                for at in range(0, len(body), 65536):
                    if select.select([sock], [], [], 0)[0]:
                        break  # answered early
                    sock.sendall(body[at:at + 65536])
            except OSError:  # the server stopped reading (a 413): its answer may still be there
                pass
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        if not data:
            return 0, f"no answer: {type(exc).__name__}".encode(), time.monotonic() - t0
    return (*_parse(data), time.monotonic() - t0)


def _parse(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, b"unparsable answer: " + data[:200]
    if any(line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower() for line in lines[1:]):
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, body


def multipart(fields):
    """[(name, bytes, filename or None, content type)] -> (body, headers)."""
    boundary = "hostile" + os.urandom(8).hex()
    parts = []
    for name, value, filename, ctype in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
                     + (f"Content-Type: {ctype}\r\n" if ctype else "").encode() + b"\r\n" + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def as_json(obj):
    return json.dumps(obj).encode(), {"Content-Type": "application/json"}


# -- the corpus --------------------------------------------------------------------------------

IMAGE_ROUTES = {  # name -> (path, image fields: the hostile one first)
    "verify": ("/v1/verify", ("image_a", "image_b")),
    "batch": ("/v1/verify/batch", ("image_a", "image_b")),
    "enroll": ("/v1/subjects/s1/templates", ("image",)),
    "subject_verify": ("/v1/subjects/s1/verify", ("image",)),
    "identify": ("/v1/identify", ("image",)),
}
CTYPES = {"pdf": "application/pdf", "zip": "application/zip", "html": "text/html", "svg_xxe": "image/svg+xml"}


def image_request(fields, hostile_name, hostile, good, extra=()):
    items = [(fields[0], hostile, f"{hostile_name}.bin", CTYPES.get(hostile_name, "image/png"))]
    items += [(name, good, f"{name}.png", "image/png") for name in fields[1:]]
    return multipart(items + list(extra))


def corpus(face_png, face_jpeg, other_png):
    """[(kind, method, path, body, headers)]; kinds are unique."""
    cases = []

    def add(kind, method, path, body=b"", headers=None, raw_head=None):
        cases.append((kind, method, path, body, headers or {}, raw_head))

    for route, (path, fields) in IMAGE_ROUTES.items():
        good_pair = [(fields[0], face_png, "a.png", "image/png")] + [
            (name, other_png, "b.png", "image/png") for name in fields[1:]]
        add(f"{route}: valid face", "POST", path, *multipart(good_pair))
    hostile = hostile_images(face_png, face_jpeg)
    for name, data in hostile.items():
        for route, (path, fields) in IMAGE_ROUTES.items():
            add(f"{route}: {name}", "POST", path, *image_request(fields, name, data, other_png))
    for name in ("tiff_deflate_268mp", "png_16bit_rgba_40mp", "gif_bomb_65000x65000"):  # the same as JSON base64
        add(f"verify json: {name}", "POST", "/v1/verify",
            *as_json({"image_a": base64.b64encode(hostile[name]).decode(), "image_b": base64.b64encode(other_png).decode()}))
    add("verify json: data URL svg", "POST", "/v1/verify", *as_json(
        {"image_a": "data:image/svg+xml;base64," + base64.b64encode(hostile["svg_xxe"]).decode(), "image_b": ""}))
    add("verify json: bad base64", "POST", "/v1/verify", *as_json({"image_a": "!!!%%%", "image_b": None}))
    add("verify json: image as object", "POST", "/v1/verify", *as_json({"image_a": {"$ne": 1}, "image_b": [1, 2]}))
    batch_bombs = [("image_a", hostile["png_16bit_rgba_40mp"], "a.png", "image/png"),
                   ("image_b", other_png, "b.png", "image/png")] * 3
    add("batch: three 40 MP bombs", "POST", "/v1/verify/batch", *multipart(batch_bombs))
    add("batch: 65 pairs", "POST", "/v1/verify/batch",
        *multipart([(n, other_png, "x.png", "image/png") for _ in range(65) for n in ("image_a", "image_b")]))
    add("enroll: 200 images", "POST", "/v1/subjects/s1/templates",
        *multipart([("image", b"x", "x.png", "image/png")] * 200))

    # bodies: size, fields, JSON
    big = bytes(30 * 1024 * 1024)
    for route in ("verify", "enroll"):
        path, fields = IMAGE_ROUTES[route]
        add(f"{route}: 30 MiB body (limit 24)", "POST", path,
            *multipart([(fields[0], big, "big.png", "image/png")]))
        add(f"{route}: 5000 form fields", "POST", path,
            *multipart([(f"f{i}", b"1", None, None) for i in range(5000)]))
    add("verify: 12 MiB image (limit 10)", "POST", "/v1/verify",
        *multipart([("image_a", bytes(12 * 1024 * 1024), "a.png", "image/png"), ("image_b", other_png, "b.png", "image/png")]))
    nested = b"[" * 100_000 + b"]" * 100_000
    for route, (path, _) in IMAGE_ROUTES.items():
        add(f"{route}: nested JSON 100k", "POST", path, nested, {"Content-Type": "application/json"})
    add("subjects POST: nested JSON", "POST", "/v1/subjects", b'{"id": "n1", "metadata": ' + b'{"a":' * 50_000
        + b"1" + b"}" * 50_000 + b"}", {"Content-Type": "application/json"})
    good_json = {"image_a": base64.b64encode(face_png).decode(), "image_b": base64.b64encode(other_png).decode()}
    body_a, body_b = json.dumps(good_json["image_a"]), json.dumps(good_json["image_b"])
    for label, number in (("4000-digit threshold", "9" * 4000), ("NaN threshold", "NaN"),
                          ("Infinity threshold", "Infinity"), ("-Infinity threshold", "-Infinity"),
                          ("1e400 threshold", "1e400"), ("negative threshold", "-1"),
                          ("string threshold", '"abc"'), ("list threshold", "[1]")):
        add(f"verify json: {label}", "POST", "/v1/verify",
            f'{{"image_a": {body_a}, "image_b": {body_b}, "threshold": {number}}}'.encode(),
            {"Content-Type": "application/json"})
    add("verify json: NaN target_fmr", "POST", "/v1/verify",
        f'{{"image_a": {body_a}, "image_b": {body_b}, "target_fmr": NaN}}'.encode(), {"Content-Type": "application/json"})
    add("verify form: threshold=nan", "POST", "/v1/verify",
        *multipart([("image_a", face_png, "a.png", "image/png"), ("image_b", other_png, "b.png", "image/png"),
                    ("threshold", b"nan", None, None)]))
    add("verify form: threshold=1e999", "POST", "/v1/verify",
        *multipart([("image_a", face_png, "a.png", "image/png"), ("image_b", other_png, "b.png", "image/png"),
                    ("threshold", b"1e999", None, None)]))
    add("identify: top_k=10^30", "POST", "/v1/identify?top_k=" + "9" * 30,
        *multipart([("image", face_png, "a.png", "image/png")]))
    add("identify: top_k=-1", "POST", "/v1/identify?top_k=-1", *multipart([("image", face_png, "a.png", "image/png")]))
    add("identify json: top_k NaN", "POST", "/v1/identify",
        f'{{"image": {body_a}, "top_k": NaN}}'.encode(), {"Content-Type": "application/json"})

    # content types
    for label, ctype in (("text/plain", "text/plain"), ("application/xml", "application/xml"),
                         ("urlencoded", "application/x-www-form-urlencoded"),
                         ("multipart without boundary", "multipart/form-data"),
                         ("json with charset garbage", "application/json; charset=x-nope"),
                         ("no content type", None)):
        headers = {"Content-Type": ctype} if ctype else {}
        add(f"verify: content type {label}", "POST", "/v1/verify", b"image_a=1&image_b=2", headers)
    add("subjects POST: multipart", "POST", "/v1/subjects", *multipart([("id", b"x1", None, None)]))
    add("verify: empty body", "POST", "/v1/verify", b"", {"Content-Type": "application/json"})
    add("verify: JSON array", "POST", "/v1/verify", b"[]", {"Content-Type": "application/json"})
    add("verify: invalid UTF-8 JSON", "POST", "/v1/verify", b'{"image_a": "\xff\xfe"}', {"Content-Type": "application/json"})

    # modalities
    add("verify: unknown modality (form)", "POST", "/v1/verify",
        *multipart([("image_a", face_png, "a.png", "image/png"), ("image_b", other_png, "b.png", "image/png"),
                    ("modality", b"../../etc/passwd", None, None)]))
    add("verify: unknown modality (query)", "POST", "/v1/verify?modality=%00",
        *multipart([("image_a", face_png, "a.png", "image/png"), ("image_b", other_png, "b.png", "image/png")]))
    add("verify json: modality as list", "POST", "/v1/verify", *as_json({**good_json, "modality": ["face"]}))
    add("calibration: unknown modality", "GET", "/v1/calibration?modality=" + "x" * 3000)
    add("subjects list: unknown modality", "GET", "/v1/subjects?modality=nope")
    add("subjects POST: modality object", "POST", "/v1/subjects", *as_json({"id": "m1", "modality": {"a": 1}}))

    # subject ids
    ids = {"traversal": "../../etc/passwd", "percent-00": "%00", "NUL": "a\x00b", "10 KB": "a" * 10240,
           "SQL": "x'; DROP TABLE subjects;--", "SQL or": "' OR '1'='1", "unicode": "名前😀\u202e",
           "empty": "", "spaces": "   ", "dot": ".", "int": 7, "null": None, "list": ["a"]}
    for label, subject_id in ids.items():
        add(f"subjects POST: id {label}", "POST", "/v1/subjects", *as_json({"id": subject_id}))
    for label in ("traversal", "percent-00", "NUL", "10 KB", "SQL", "unicode", "dot"):
        quoted = urllib.parse.quote(ids[label], safe="")
        add(f"subject GET: id {label}", "GET", f"/v1/subjects/{quoted}")
        add(f"subject DELETE: id {label}", "DELETE", f"/v1/subjects/{quoted}")
        add(f"enroll: id {label}", "POST", f"/v1/subjects/{quoted}/templates",
            *multipart([("image", face_png, "a.png", "image/png")]))
        add(f"thumbnail: id {label}", "GET", f"/v1/subjects/{quoted}/thumbnail")
    add("subject GET: raw traversal path", "GET", "/v1/subjects/../../etc/passwd")
    add("subject GET: encoded slash traversal", "GET", "/v1/subjects/..%2F..%2Fetc%2Fpasswd")
    add("subjects POST: metadata 1 MB", "POST", "/v1/subjects", *as_json({"id": "big1", "metadata": {"a": "x" * 1_000_000}}))
    add("subjects POST: metadata list", "POST", "/v1/subjects", *as_json({"id": "big2", "metadata": [1, 2]}))
    add("subjects POST: unknown fields", "POST", "/v1/subjects", *as_json({"id": "u1", "admin": True}))
    add("subjects list: limit 10^30", "GET", "/v1/subjects?limit=" + "9" * 30)
    add("subjects list: limit -5", "GET", "/v1/subjects?limit=-5")
    add("subjects list: limit abc", "GET", "/v1/subjects?limit=abc")
    add("subjects list: after NUL", "GET", "/v1/subjects?after=%00%27%22")

    # methods, headers, URLs
    for method, path in (("FOO", "/v1/verify"), ("BREW", "/healthz"), ("PROPFIND", "/v1/subjects"), ("TRACE", "/"),
                         ("DELETE", "/v1/verify"), ("PUT", "/metrics"), ("PATCH", "/v1/subjects/s1"),
                         ("OPTIONS", "/v1/identify"), ("CONNECT", "/openapi.json")):
        add(f"method {method} {path}", method, path)
    add("method with bad token F(O", None, "/", raw_head=b"F(O / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    add("request line garbage", None, "/", raw_head=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
    add("HTTP/0.9 style", None, "/", raw_head=b"GET /\r\n\r\n")
    add("URL 20 KB", "GET", "/v1/subjects/" + "a" * 20_000)
    add("header 40 KB", "GET", "/healthz", headers={"X-Junk": "j" * 40_000})
    add("200 headers", "GET", "/healthz", headers={f"X-H{i}": "1" for i in range(200)})
    add("X-API-Key 10 KB", "GET", "/v1/subjects", headers={"X-API-Key": "k" * 10_000})
    add("X-API-Key non-ASCII", "GET", "/v1/subjects", headers={"X-API-Key": "ключ\u00ff"})
    add("Content-Length negative", "POST", "/v1/verify", headers={"Content-Length": "-1", "Content-Type": "application/json"})
    add("Content-Length huge, no body", "POST", "/v1/verify",
        headers={"Content-Length": "9" * 20, "Content-Type": "application/json"})
    add("Transfer-Encoding chunked 30 MiB", None, "/v1/verify", raw_head=None)  # built in run_case

    # plain GETs on every other route
    for path in ("/healthz", "/readyz", "/", "/openapi.json", "/metrics", "/v1/modalities", "/v1/calibration",
                 "/v1/subjects", "/v1/subjects/s1", "/v1/subjects/s1/thumbnail", "/static/../../etc/passwd",
                 "/openapi.json?x=../../", "/nope", "/v1/verify"):
        add(f"GET {path}", "GET", path)
    return cases


def chunked_body(total=30 * 1024 * 1024, piece=1024 * 1024):
    body = b"".join(f"{piece:x}\r\n".encode() + bytes(piece) + b"\r\n" for _ in range(total // piece)) + b"0\r\n\r\n"
    return body


# -- judging -------------------------------------------------------------------------------------

def error_code(body):
    """(parsed JSON or None, the error code or None)."""
    try:
        data = json.loads(body, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    except (ValueError, UnicodeDecodeError):
        return None, None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data, data["error"].get("code")
    return data, None


def judge(kind, path, status, body, *, anonymous_protected=False, secrets=(), method=None):
    """The FAILs of one answer (a list of strings)."""
    fails = []
    data, code = error_code(body)
    text = body.decode("utf-8", "replace")
    route = (path or "").split("?")[0]
    is_v1 = route.startswith("/v1")
    if any(mark in text for mark in TRACEBACK_MARKS):
        fails.append("traceback text in the body")
    for secret in secrets:
        if secret and secret in text:
            fails.append(f"body names {secret!r}")
    if status >= 500 and not (status == 503 and code in DOCUMENTED_503):
        fails.append(f"{status} {code or 'no JSON error'}")
    if status >= 400 and is_v1 and not (isinstance(data, dict) and set(data.get("error") or {}) == {"code", "message"}):
        fails.append(f"{status} without the JSON error body")
    if 200 <= status < 300 and method != "OPTIONS" and (route.startswith("/v1") or route in ("/readyz", "/healthz", "/openapi.json")) \
            and data is None:
        fails.append("2xx body is not strict JSON")
    if anonymous_protected and (200 <= status < 300 or code in BODY_CODES):
        fails.append(f"protected route answered {status} {code} without a key")
    return code, fails


def protected(path):
    """Whether the route needs a key once one exists (VERIFIER_PROTECT=all, the default)."""
    return (path or "").split("?")[0].startswith(PROTECTED_PREFIXES)


# -- the service ---------------------------------------------------------------------------------

class Service:
    """`python -m verifier serve ...` in its own session; workers' RSS sampled every 0.2 s; dead workers noticed."""

    def __init__(self, argv, env, log_path, port):
        self.argv, self.log_path, self.port = argv, log_path, port
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env)
        self.samples, self.seen, self.done = [], set(), threading.Event()
        try:
            wait_until(port, "/readyz", self.process, log_path)
        except BaseException:
            stop(self.process)
            raise
        self.initial = set(children(self.process.pid))
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while not self.done.is_set():
            pids = children(self.process.pid)
            self.seen.update(pids)
            values = [v for v in (rss_mb(pid) for pid in pids) if v is not None]
            self.samples.append((time.monotonic(), round(sum(values), 1), len(values)))
            self.done.wait(0.2)

    def rss_now(self):
        return round(sum(v for v in (rss_mb(pid) for pid in children(self.process.pid)) if v is not None), 1)

    def dead_workers(self):
        """Worker pids gone, with gunicorn's own max-requests restarts left out."""
        now = set(children(self.process.pid))
        gone = (self.seen | self.initial) - now
        log = Path(self.log_path).read_text(errors="replace")
        restarts = log.count("Autorestarting worker")
        return sorted(gone), restarts, self.process.poll()

    def close(self):
        self.done.set()
        stop(self.process)


def serve_argv(bundles, port, args, host=None, create_store=False):
    argv = [sys.executable, "-m", "verifier", "serve"]
    for spec in bundles:
        argv += ["--bundle", spec]
    argv += ["--port", str(port), "--workers", str(args.workers), "--threads", str(args.threads)]
    if host:
        argv += ["--host", host]
    if create_store:
        argv.append("--create-store")
    return argv


def cli(argv, env, timeout=120):
    done = subprocess.run([sys.executable, "-m", "verifier", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


# -- running the corpus ------------------------------------------------------------------------------

def run_case(port, case, key=None):
    kind, method, path, body, headers, raw_head = case
    headers = dict(headers)
    if key is not None and "X-API-Key" not in headers:
        headers["X-API-Key"] = key
    if kind.startswith("Transfer-Encoding chunked"):
        extra = f"X-API-Key: {key}\r\n" if key else ""
        raw = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
               f"Transfer-Encoding: chunked\r\n{extra}\r\n").encode()
        return http(port, "POST", path, chunked_body(), raw_head=raw)
    return http(port, method, path, body, headers, raw_head=raw_head)


def run_corpus(service, cases, label, results, fails, *, key=None, anonymous=False, secrets=()):
    t0 = time.monotonic()
    for case in cases:
        kind, method, path = case[:3]
        status, body, seconds = run_case(service.port, case, key)
        is_protected = anonymous and protected(path)
        code, problems = judge(kind, path, status, body, anonymous_protected=is_protected, secrets=secrets,
                               method=method)
        if status == 0 and (path or "").startswith("/v1") and not kind.startswith(("request line", "HTTP/0.9")):
            problems.append(f"no answer ({body.decode(errors='replace')})")
        results.setdefault(kind, {})[label] = f"{status} {code or ''}".strip()
        for problem in problems:
            fails.append(f"{label}: {kind}: {problem}")
        if seconds > 10:
            print(f"  (slow: {kind} took {seconds:.1f} s)")
    return time.monotonic() - t0


def slow_client(service, seconds, key=None):
    """POST /v1/verify sending one body byte a second while /healthz is polled; its answer and the polls' figures."""
    port = service.port
    body = b'{"a": 1}' + b" " * max(0, int(seconds) - 8)
    head = (f"POST /v1/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n").encode()
    polls, answer = [], {}

    def slow():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + seconds) as sock:
                sock.sendall(head)
                data = b""
                for i in range(len(body)):
                    if select.select([sock], [], [], 0)[0]:
                        break
                    sock.sendall(body[i:i + 1])
                    time.sleep(1.0)
                while chunk := sock.recv(65536):
                    data += chunk
            answer["status"], answer["body"] = _parse(data)
        except OSError as exc:
            answer["status"], answer["body"] = 0, repr(exc).encode()

    thread = threading.Thread(target=slow)
    t0 = time.monotonic()
    thread.start()
    while thread.is_alive() and time.monotonic() - t0 < seconds + TIMEOUT:
        status, _, took = http(port, "GET", "/healthz", timeout=5)
        polls.append((status, took))
        time.sleep(0.5)
    thread.join(TIMEOUT)
    took = [t for _, t in polls]
    return {"answer": answer.get("status"), "answer_code": error_code(answer.get("body", b""))[1],
            "seconds": round(time.monotonic() - t0, 1), "healthz_polls": len(polls),
            "healthz_failed": sum(1 for s, _ in polls if s != 200),
            "healthz_max_ms": round(1000 * max(took), 1) if took else None}


def rss_figures(service, start):
    values = [v for _, v, _ in service.samples] or [start]
    return {"start": start, "peak": max(values + [start]), "end": service.rss_now(), "samples": len(values),
            "workers": len(children(service.process.pid))}


def check_workers(service, label, fails):
    gone, restarts, exit_code = service.dead_workers()
    if exit_code is not None:
        fails.append(f"{label}: the gunicorn master exited ({exit_code})")
    if len(gone) > restarts:
        fails.append(f"{label}: worker(s) died: {gone} (max-requests restarts in the log: {restarts})")
    return {"workers_gone": gone, "max_requests_restarts": restarts}


def check_rss(figures, label, limit, fails):
    growth = figures["peak"] - figures["start"]
    if growth > limit:
        fails.append(f"{label}: peak worker RSS {figures['peak']} MB is {growth:.0f} MB over the start "
                     f"({figures['start']} MB; limit {limit} MB)")


def valid_verify(port, images, key=None):
    body, headers = multipart([("image_a", images[0], "a.png", "image/png"), ("image_b", images[1], "b.png", "image/png")])
    if key:
        headers["X-API-Key"] = key
    status, answer, _ = http(port, "POST", "/v1/verify", body, headers)
    return status, error_code(answer)[1]


def setup_subject(port, face_png, key=None):
    headers = {"X-API-Key": key} if key else {}
    body, h = as_json({"id": "s1"})
    created = http(port, "POST", "/v1/subjects", body, {**h, **headers})[0]
    body, h = multipart([("image", face_png, "a.png", "image/png")])
    enrolled = http(port, "POST", "/v1/subjects/s1/templates", body, {**h, **headers})[0]
    return created, enrolled


def quickstart(args, bundles, cases, images, log_dir, results, fails):
    store_dir = Path(tempfile.mkdtemp(prefix="hostile-quickstart-"))
    url = f"sqlite:///{store_dir / 'verifier.db'}"
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DATABASE_URL=url)
    argv = serve_argv(bundles, port, args, create_store=True)
    print(f"quickstart: {' '.join(argv[1:])} (DATABASE_URL={url})")
    service = Service(argv, env, log_dir / "quickstart.log", port)
    out = {"store_created_said": "creating the enrollment store" in Path(log_dir / "quickstart.log").read_text()}
    try:
        start = service.rss_now()
        out["setup"] = setup_subject(port, images[0])
        out["corpus_seconds"] = round(run_corpus(service, cases, "quickstart", results, fails,
                                                 secrets=(str(store_dir),)), 1)
        out["slow_client"] = slow_client(service, args.slow_seconds)
        if out["slow_client"]["healthz_failed"]:
            fails.append(f"quickstart: /healthz failed {out['slow_client']['healthz_failed']} times under a slow client")
        out["valid_after"] = valid_verify(port, images)
        if out["valid_after"][0] != 200:
            fails.append(f"quickstart: a valid verify after the corpus answered {out['valid_after']}")
        out["rss_mb"] = rss_figures(service, start)
        check_rss(out["rss_mb"], "quickstart", args.rss_growth_mb, fails)
        out.update(check_workers(service, "quickstart", fails))
    finally:
        service.close()
        shutil.rmtree(store_dir, ignore_errors=True)
    return out


def store_probe(port, key, secrets):
    """The answers of store routes, open routes and verify while the store is wherever it is."""
    out = {}
    for label, method, path, body, headers in (
            ("GET /v1/subjects", "GET", "/v1/subjects", b"", {}),
            ("GET /v1/subjects/s1", "GET", "/v1/subjects/s1", b"", {}),
            ("POST /v1/subjects", "POST", "/v1/subjects", None, None),
            ("GET /healthz", "GET", "/healthz", b"", {}),
            ("GET /v1/modalities", "GET", "/v1/modalities", b"", {}),
            ("GET /openapi.json", "GET", "/openapi.json", b"", {})):
        statuses = []
        for _ in range(4):  # reach both workers and their threads
            if body is None:  # a new subject id each time
                body_now, headers_now = as_json({"id": f"p{time.monotonic_ns()}"})
            else:
                body_now, headers_now = body, headers
            status, answer, _ = http(port, method, path, body_now, {**headers_now, "X-API-Key": key})
            code, problems = judge(label, path, status, answer, secrets=secrets)
            statuses.append((status, code, problems, answer.decode("utf-8", "replace")[:160]))
        out[label] = statuses
    return out


def docker(args, bundles, cases, images, log_dir, results, fails):
    data_dir = Path(tempfile.mkdtemp(prefix="hostile-docker-"))
    db = data_dir / "verifier.db"
    url = f"sqlite:///{db}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DATABASE_URL=url)
    out = {}
    port = free_port()
    service = None
    try:
        # refusals: no store (a volume not mounted), then a store with no API key
        for label, create in (("no_store", False), ("no_key", True)):
            argv = serve_argv(bundles, port, args, host="0.0.0.0", create_store=create)
            try:
                done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
                refused = {"exit": done.returncode, "message": (done.stderr.strip().splitlines() or [""])[-1]}
            except subprocess.TimeoutExpired:
                refused = {"exit": None, "message": "started (did not refuse)"}
            out[f"refused_{label}"] = refused
            print(f"docker: serve --host 0.0.0.0 with {label.replace('_', ' ')}: exit {refused['exit']}: "
                  f"{refused['message']}")
            if refused["exit"] in (0, None):
                fails.append(f"docker: serve on 0.0.0.0 with {label} did not refuse")
        if "no API key" not in out["refused_no_key"]["message"]:
            fails.append("docker: the refusal without a key does not say 'no API key'")
        keys = {}
        for name, scope in (("ops", "write"), ("reader", "read")):
            code, stdout, stderr = cli(["keys", "create", "--name", name, "--scope", scope], env)
            key_id = stderr.split("API key ", 1)[1].split()[0] if "API key " in stderr else None
            keys[name] = (stdout.strip(), key_id)
            print(f"docker: keys create --name {name} --scope {scope}: exit {code}, id {key_id}")
            if code != 0 or not stdout.startswith("vk_"):
                fails.append(f"docker: keys create --name {name} failed: {stderr.strip()[-200:]}")
                return out
        key, reader = keys["ops"][0], keys["reader"][0]
        secrets = (str(data_dir), "verifier.db", "sqlite3", "OperationalError", key, reader)
        argv = serve_argv(bundles, port, args, host="0.0.0.0")
        print(f"docker: {' '.join(argv[1:])} (DATABASE_URL={url}); clients on 127.0.0.1:{port}")
        service = Service(argv, env, log_dir / "docker.log", port)
        start = service.rss_now()
        out["setup"] = setup_subject(port, images[0], key)
        out["corpus_seconds_anonymous"] = round(run_corpus(service, cases, "docker no key", results, fails,
                                                           anonymous=True, secrets=secrets), 1)
        out["corpus_seconds_key"] = round(run_corpus(service, cases, "docker key", results, fails, key=key,
                                                     secrets=secrets), 1)
        # a read key on write routes: 403
        reads = {}
        for label, method, path, body, headers in (
                ("POST /v1/subjects", "POST", "/v1/subjects", *as_json({"id": "r1"})),
                ("DELETE /v1/subjects/s1", "DELETE", "/v1/subjects/s1", b"", {}),
                ("POST /v1/subjects/s1/templates", "POST", "/v1/subjects/s1/templates",
                 *multipart([("image", images[0], "a.png", "image/png")])),
                ("GET /v1/subjects", "GET", "/v1/subjects", b"", {})):
            status, answer, _ = http(port, method, path, body, {**headers, "X-API-Key": reader})
            reads[label] = f"{status} {error_code(answer)[1] or ''}".strip()
            expected = 200 if method == "GET" else 403
            if status != expected:
                fails.append(f"docker: read key on {label} answered {status}, expected {expected}")
        out["read_key"] = reads
        out["slow_client"] = slow_client(service, args.slow_seconds, key)
        if out["slow_client"]["healthz_failed"]:
            fails.append(f"docker: /healthz failed {out['slow_client']['healthz_failed']} times under a slow client")
        # the store moved away, then back
        moved = data_dir.parent / (data_dir.name + "-moved.db")
        shutil.move(str(db), moved)
        away = store_probe(port, key, secrets)
        out["store_moved"] = {k: [f"{s} {c or ''}".strip() for s, c, _, _ in v] for k, v in away.items()}
        out["store_moved_bodies"] = {k: v[0][3] for k, v in away.items() if v[0][0] >= 400}
        for label, answers in away.items():
            for status, code, problems, _ in answers:
                fails += [f"docker: store moved: {label}: {p}" for p in problems]
                store_route = label.split()[1].startswith(("/v1/subjects",))
                if store_route and not (status == 503 and code == "store_unavailable"):
                    fails.append(f"docker: store moved: {label} answered {status} {code}, expected 503 store_unavailable")
                if not store_route and status != 200:
                    fails.append(f"docker: store moved: {label} answered {status} {code}, expected 200")
        out["master_alive_while_moved"] = service.process.poll() is None
        out["db_recreated_while_moved"] = db.exists()
        if db.exists():
            fails.append("docker: store moved: the service created a new empty store at the old path")
            db.unlink()
        shutil.move(str(moved), db)
        back = store_probe(port, key, secrets)
        out["store_back"] = {k: [f"{s} {c or ''}".strip() for s, c, _, _ in v] for k, v in back.items()}
        for label, answers in back.items():
            for status, code, problems, _ in answers:
                if status not in (200, 201):
                    fails.append(f"docker: store moved back: {label} answered {status} {code}")
        # revoke every key with the CLI: the revoked key and no key both 401
        revoked = {}
        for name in ("ops", "reader"):
            code, stdout, stderr = cli(["keys", "revoke", keys[name][1]], env)
            revoked[name] = code
            if code != 0:
                fails.append(f"docker: keys revoke {keys[name][1]} failed: {stderr.strip()[-200:]}")
        after = {}
        for who, header in (("revoked key", {"X-API-Key": key}), ("revoked read key", {"X-API-Key": reader}),
                            ("no key", {}), ("made-up key", {"X-API-Key": "vk_" + "A" * 43})):
            for label, method, path, body, headers in (
                    ("GET /v1/subjects", "GET", "/v1/subjects", b"", {}),
                    ("POST /v1/subjects", "POST", "/v1/subjects", *as_json({"id": "after1"})),
                    ("POST /v1/verify", "POST", "/v1/verify", *multipart(
                        [("image_a", images[0], "a.png", "image/png"), ("image_b", images[1], "b.png", "image/png")])),
                    ("GET /metrics", "GET", "/metrics", b"", {})):
                answers = []
                for _ in range(4):
                    status, answer, _ = http(port, method, path, body, {**headers, **header})
                    code, problems = judge(label, path, status, answer, secrets=secrets)
                    fails += [f"docker: after revoke: {who}: {label}: {p}" for p in problems]
                    if status != 401:
                        fails.append(f"docker: after revoke: {who}: {label} answered {status} {code}, expected 401")
                    answers.append(f"{status} {code or ''}".strip())
                    message = (error_code(answer)[0] or {}).get("error", {}).get("message", "")
                after[f"{who}: {label}"] = sorted(set(answers))
            after[f"{who}: message"] = message[:120]
        out["after_revoke"] = after
        out["open_routes_after_revoke"] = {p: http(port, "GET", p)[0] for p in ("/healthz", "/v1/modalities", "/readyz")}
        out["rss_mb"] = rss_figures(service, start)
        check_rss(out["rss_mb"], "docker", args.rss_growth_mb, fails)
        out.update(check_workers(service, "docker", fails))
    finally:
        if service is not None:
            service.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        Path(str(data_dir) + "-moved.db").unlink(missing_ok=True)
    return out


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", help="serve's --bundle values (default: face=bundles/face)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slow-seconds", type=float, default=10.0)
    parser.add_argument("--rss-growth-mb", type=float, default=300.0,
                        help="FAIL when the summed worker RSS peaks this much over its start")
    parser.add_argument("--skip", default="", help="phases to skip, comma-separated: quickstart,docker")
    parser.add_argument("--log-dir", default=None)
    return parser


def print_table(results, labels):
    width = max(len(kind) for kind in results) + 2
    print(f"\n{'request kind':{width}}" + "".join(f"{label:>30}" for label in labels))
    for kind, row in results.items():
        print(f"{kind:{width}}" + "".join(f"{row.get(label, '-'):>30}" for label in labels))


def main():
    args = build_parser().parse_args()
    bundles = args.bundle or [f"face={ROOT / DEFAULT_BUNDLE}"]
    first = Path(bundles[0].split("=", 1)[-1]).resolve()
    meta = read_meta(first)
    profile = Profile.from_dict(meta["profile"])
    import cv2

    images = payload_images(profile)
    face_jpeg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    t0 = time.monotonic()
    cases = corpus(images[0], face_jpeg, images[1])
    print(f"bundle {meta['bundle_id']} ({meta['profile']['name']}), {args.workers} workers x {args.threads} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; corpus of {len(cases)} requests "
          f"(built in {time.monotonic() - t0:.1f} s)")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-hostile-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    results, fails, summary = {}, [], {"benchmark": "hostile", "bundle": meta["bundle_id"], "corpus": len(cases),
                                       "workers": args.workers, "threads": args.threads, "log_dir": str(log_dir)}
    labels = []
    if "quickstart" not in skip:
        summary["quickstart"] = quickstart(args, bundles, cases, images, log_dir, results, fails)
        labels.append("quickstart")
    if "docker" not in skip:
        summary["docker"] = docker(args, bundles, cases, images, log_dir, results, fails)
        labels += ["docker no key", "docker key"]
    print_table(results, labels)
    for phase in ("quickstart", "docker"):
        if phase in summary:
            for name, value in summary[phase].items():
                if name != "store_moved_bodies":
                    print(f"{phase} {name}: {value}")
            if "rss_mb" in summary[phase]:
                rss = summary[phase]["rss_mb"]
                print(f"{phase}: worker RSS (sum of {rss['workers']}) start {rss['start']} MB, peak {rss['peak']} MB, "
                      f"end {rss['end']} MB ({rss['samples']} samples every 0.2 s)")
    if "docker" in summary and summary["docker"].get("store_moved_bodies"):
        print("docker: bodies while the store was moved:", json.dumps(summary["docker"]["store_moved_bodies"]))
    counts = {}
    for row in results.values():
        for label, answer in row.items():
            status = answer.split()[0]
            counts.setdefault(label, {}).setdefault(status, 0)
            counts[label][status] += 1
    summary["status_counts"] = counts
    summary["fails"] = fails
    summary["seconds"] = round(time.monotonic() - t0, 1)
    print(f"\n{len(fails)} FAIL(s)" + "".join(f"\n  FAIL {f}" for f in fails))
    print(json.dumps(summary, default=str))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
