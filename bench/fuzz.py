"""Fuzz the image decoder for minutes: mutated headers of small real and hostile files, peak RSS printed.

    python bench/fuzz.py [--minutes 5] [--seed 0]

Hypothesis runs rounds of 500 examples (each round its own seed) until the time is up. Each
example is a seed file (every accepted format, 8- and 16-bit, plus files claiming huge sizes)
with bytes of its header overwritten, inserted or cut, then maybe truncated. A decode may
succeed or raise a VerifierError with a 4xx status; anything else is a finding. The table
counts outcomes by error code; the last line is one JSON object (findings, slowest decode,
peak RSS of this process once the corpus is built and after the campaign).
"""

import argparse
import collections
import json
import resource
import struct
import sys
import time
import zlib

import cv2
import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from verifier.core.errors import VerifierError
from verifier.core.images import decode_image

ROUND = 500


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, depth, colour_type, channels, rows=None):
    """A PNG of zeros at any bit depth (OpenCV writes only some); `rows` < height: a small body under a big claim."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(width * channels * depth // 8)
    body = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def seeds():
    """Small files of every accepted format, and hostile ones (16-bit RGBA, huge claimed sizes)."""
    image = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    out = [cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm")]
    out += [cv2.imencode(".pgm", image[:, :, 0])[1].tobytes(),
            cv2.imencode(".tiff", image.astype(np.uint16) * 257)[1].tobytes(),
            cv2.imencode(".tiff", image.astype(np.float32) / 255)[1].tobytes(),
            _png(1000, 1000, 16, 6, 4), _png(30_000, 30_000, 8, 0, 1, rows=2)]
    return out


def mutations(corpus):
    @st.composite
    def mutated(draw):
        data = bytearray(draw(st.sampled_from(corpus)))
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, min(127, len(data) - 1)))
            action = draw(st.sampled_from(["set", "insert", "cut", "int"]))
            if action == "set":
                data[at] = draw(st.integers(0, 255))
            elif action == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif action == "cut":
                del data[at:at + draw(st.integers(1, 16))]
            else:  # a 32-bit field set to an extreme (sizes, offsets, counts)
                data[at:at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 65535])))
        if draw(st.booleans()):
            data = data[:draw(st.integers(1, len(data)))]
        return bytes(data)
    return mutated()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    corpus = seeds()
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    outcomes, findings, slowest = collections.Counter(), [], (0.0, "")
    deadline = time.monotonic() + 60 * args.minutes

    @settings(max_examples=ROUND, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutations(corpus))
    def one(data):
        nonlocal slowest
        if time.monotonic() > deadline:
            return
        began = time.perf_counter()
        try:
            decode_image(data)
            outcomes["decoded"] += 1
        except VerifierError as exc:
            outcomes[f"{exc.status} {exc.code}"] += 1
            if not 400 <= exc.status < 500:
                findings.append(f"status {exc.status}: {exc.message} ({data[:24].hex()})")
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a finding
            findings.append(f"{type(exc).__name__}: {exc} ({data[:24].hex()})")
        took = time.perf_counter() - began
        if took > slowest[0]:
            slowest = (took, data[:16].hex())

    rounds = 0
    while time.monotonic() < deadline:
        seed(args.seed + rounds)(one)()
        rounds += 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    total = sum(outcomes.values())
    print(f"{'outcome':<32}{'count':>8}")
    for name, count in outcomes.most_common():
        print(f"{name:<32}{count:>8}")
    print(f"{total} inputs in {rounds} rounds; findings {len(findings)}; slowest decode {slowest[0] * 1000:.1f} ms; "
          f"peak RSS {peak} MiB (at start {start_rss} MiB)")
    for finding in findings[:20]:
        print("  finding:", finding)
    print(json.dumps({"inputs": total, "rounds": rounds, "findings": len(findings), "outcomes": dict(outcomes),
                      "slowest_ms": round(slowest[0] * 1000, 1), "peak_rss_mib": peak, "start_rss_mib": start_rss}))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
