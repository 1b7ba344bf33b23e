"""Small synthetic image sets for fast tests (not real data: quality claims come from ORL).

Each identity is a fixed random blob pattern; its images are that pattern shifted a little
and with fresh noise, so a model can learn to tell identities apart in a few steps.
"""

from pathlib import Path

import cv2
import numpy as np


def identity_images(n_identities=6, per_identity=6, size=(56, 46), seed=0):
    """{identity name: [uint8 HxW images]} with a distinct pattern per identity."""
    rng = np.random.default_rng(seed)
    height, width = size
    out = {}
    for k in range(n_identities):
        base = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 3.0)
        base = (base - base.min()) / (base.max() - base.min() + 1e-9)
        images = []
        for _ in range(per_identity):
            dy, dx = rng.integers(-2, 3, size=2)
            shifted = np.roll(np.roll(base, dy, axis=0), dx, axis=1)
            noisy = np.clip(shifted + rng.normal(0, 0.05, shifted.shape), 0, 1)
            images.append((noisy * 255).astype(np.uint8))
        out[f"id{k:02d}"] = images
    return out


def write_folder(root, n_identities=6, per_identity=6, size=(56, 46), seed=0, ext=".png"):
    """Write ROOT/<identity>/<n>.png and return ROOT."""
    root = Path(root)
    for name, images in identity_images(n_identities, per_identity, size, seed).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            cv2.imwrite(str(root / name / f"{i}{ext}"), image)
    return root


def png_bytes(image):
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _stroke(points, jitter, rng, size):
    """Draw a smooth pen stroke through `points` (perturbed by `jitter`) as dark ink on paper."""
    height, width = size
    canvas = np.full((height, width), 235, np.uint8)
    moved = points + rng.normal(0, jitter, points.shape)
    t = np.linspace(0, 1, 200)
    curve = np.stack([np.interp(t, np.linspace(0, 1, len(moved)), moved[:, k]) for k in (0, 1)], axis=1)
    pixels = np.round(curve * [width * 0.8, height * 0.6] + [width * 0.1, height * 0.2]).astype(np.int32)
    cv2.polylines(canvas, [pixels.reshape(-1, 1, 2)], False, 25, thickness=2, lineType=cv2.LINE_AA)
    return canvas


def write_signature_folder(root, writers=4, genuine=5, forged=3, size=(120, 300), seed=0):
    """SYNTHETIC signatures in ROOT/<writer>/genuine|forged/: not real handwriting.

    Each writer is a random pen path; genuine samples redraw it with small jitter, skilled
    forgeries with larger jitter, so forgeries are harder impostors than other writers.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for w in range(writers):
        path = np.column_stack([np.linspace(0, 1, 9), rng.random(9)])
        for kind, count, jitter in (("genuine", genuine, 0.01), ("forged", forged, 0.05)):
            folder = root / f"writer{w:02d}" / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i}.png"), _stroke(path, jitter, rng, size))
    return root
