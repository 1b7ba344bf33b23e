"""Random augmentation of preprocessed batches, per profile, in TensorFlow.

Applied after `verifier.core.profiles.preprocess`, so the model trains on exactly what serving
feeds it plus label-preserving perturbations: a random affine warp (shift, rotation,
scale), a horizontal flip only where the profile allows it (never for signatures: a
mirrored signature is not the writer's), and intensity changes. Standardised profiles
(faces) are invariant to brightness / contrast by construction, so those get a gamma
change and pixel noise instead. Two changes target what held-out ORL faces get wrong:
a light ramp across the face (side lighting) and a blanked rectangle (glasses on / off,
occlusion). Randomness is stateless, keyed by a per-batch seed.

The default level depends on the loss (training.trainer.DEFAULT_AUGMENT): `robust` for
cosface, where it took the ORL EER on the two hardest folds from about 12.7% to 8.2%, and
`none` for the pair and triplet losses, where every level raised the EER at 1,000 steps.
"""

import math
from dataclasses import asdict, dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 0.0
    scale: float = 0.0  # zoom in [1 - scale, 1 + scale]
    shift: float = 0.0  # fraction of height / width
    flip: bool = False
    contrast: float = 0.0  # unit profiles: multiply by [1 - c, 1 + c]
    brightness: float = 0.0  # unit profiles: add [-b, b]
    noise: float = 0.0  # Gaussian pixel noise, in units of the image's own spread
    illumination: float = 0.0  # multiply by a random linear ramp from 1 - i to 1 + i (side light)
    erase: float = 0.0  # probability of blanking a random rectangle (occlusion, glasses)
    stroke: float = 0.0  # ink: probability of a stroke one pixel thicker or thinner (another pen)
    elastic: float = 0.0  # ink: largest smooth local displacement, in pixels (the hand's variation)
    fill: str = "REFLECT"  # how warps fill the border; ink on a blank page: "CONSTANT" (no mirrored strokes)

    def to_dict(self):
        return asdict(self)


LEVELS = {
    "none": {},
    "flip": {},  # only the mirror image (where the profile allows it)
    "light": dict(rotation_deg=5.0, scale=0.05, shift=0.05, contrast=0.1, brightness=0.05),
    # light geometry, plus the two changes behind most held-out ORL errors: side light and
    # occlusion (glasses on / off)
    "robust": dict(rotation_deg=5.0, scale=0.05, shift=0.05, illumination=0.5, erase=0.5),
    "strong": dict(rotation_deg=10.0, scale=0.1, shift=0.08, contrast=0.25, brightness=0.1, noise=0.05),
}


# Signatures (profiles with an ink crop): light geometry, another pen and the hand's own
# variation at every level; the photographic changes (light, occlusion) do not occur on a scan.
INK_LEVELS = {
    "none": {},
    "flip": {},
    "light": dict(rotation_deg=3.0, scale=0.05, shift=0.03, stroke=0.3, elastic=1.0, fill="CONSTANT"),
    "robust": dict(rotation_deg=5.0, scale=0.08, shift=0.04, stroke=0.5, elastic=2.0, fill="CONSTANT"),
    "strong": dict(rotation_deg=8.0, scale=0.12, shift=0.06, stroke=0.6, elastic=3.0, fill="CONSTANT"),
}


def augmentation_for(profile, level):
    """The augmentation for a profile at a level (none / flip / light / robust / strong)."""
    if level not in LEVELS:
        raise ValueError(f"unknown augmentation level {level!r}; known: {', '.join(LEVELS)}")
    flip = level != "none" and profile.allow_flip
    return Augmentation(flip=flip, **(INK_LEVELS if profile.ink_crop else LEVELS)[level])


def _affine_transforms(batch, height, width, aug, seed):
    """(B, 8) projective transforms mapping output pixels to input pixels."""
    keys = tf.random.experimental.stateless_split(seed, 3)
    theta = tf.random.stateless_uniform([batch], keys[0], -1.0, 1.0) * math.radians(aug.rotation_deg)
    zoom = 1.0 + tf.random.stateless_uniform([batch], keys[1], -1.0, 1.0) * aug.scale
    shift = tf.random.stateless_uniform([batch, 2], keys[2], -1.0, 1.0) * aug.shift
    tx, ty = shift[:, 0] * width, shift[:, 1] * height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a0, a1 = tf.cos(theta) / zoom, -tf.sin(theta) / zoom
    b0, b1 = tf.sin(theta) / zoom, tf.cos(theta) / zoom
    a2 = cx + tx - a0 * cx - a1 * cy
    b2 = cy + ty - b0 * cx - b1 * cy
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _illumination_ramp(images, strength, seed):
    """Multiply each image by a linear ramp in a random direction: light from one side.
    Values are shifted to be non-negative first so the ramp darkens, never inverts."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    keys = tf.random.experimental.stateless_split(seed, 2)
    angle = tf.random.stateless_uniform([batch, 1, 1, 1], keys[0], 0.0, 2.0 * math.pi)
    amount = tf.random.stateless_uniform([batch, 1, 1, 1], keys[1], 0.0, strength)
    rows = tf.linspace(-1.0, 1.0, height)[None, :, None, None]
    cols = tf.linspace(-1.0, 1.0, width)[None, None, :, None]
    ramp = 1.0 + amount * (tf.cos(angle) * cols + tf.sin(angle) * rows) / math.sqrt(2.0)
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    return (images - low) * ramp + low


def _random_erase(images, probability, seed, max_fraction=0.4):
    """Blank one random rectangle (sides up to `max_fraction` of the image) in a
    `probability` share of the images, filled with the image's mean."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    keys = tf.random.experimental.stateless_split(seed, 3)
    size = tf.random.stateless_uniform([batch, 2], keys[0], 0.1, max_fraction)
    corner = tf.random.stateless_uniform([batch, 2], keys[1]) * (1.0 - size)
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None, None] / tf.cast(height, tf.float32)
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :, None] / tf.cast(width, tf.float32)
    top, left = corner[:, 0, None, None, None], corner[:, 1, None, None, None]
    inside = ((rows >= top) & (rows < top + size[:, 0, None, None, None]) &
              (cols >= left) & (cols < left + size[:, 1, None, None, None]))
    chosen = tf.random.stateless_uniform([batch, 1, 1, 1], keys[2]) < probability
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return tf.where(inside & chosen, mean, images)


def _stroke_width(images, probability, seed):
    """Thicken (a 3x3 max) or thin (a 3x3 min) the bright ink of a `probability` share of the images."""
    keys = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(images)[0]
    chosen = tf.random.stateless_uniform([batch, 1, 1, 1], keys[0]) < probability
    thicker = tf.random.stateless_uniform([batch, 1, 1, 1], keys[1]) < 0.5
    dilated = tf.nn.max_pool2d(images, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-images, 3, 1, "SAME")
    return tf.where(chosen, tf.where(thicker, dilated, eroded), images)


def _elastic(images, pixels, seed, grid=(3, 6)):
    """Warp each image by a smooth random displacement field (a coarse grid of offsets up to
    `pixels`, upsampled bicubically), sampled bilinearly; outside the image reads 0."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    coarse = tf.random.stateless_uniform([batch, grid[0], grid[1], 2], seed, -1.0, 1.0) * pixels
    flow = tf.image.resize(coarse, [height, width], method="bicubic")
    rows = tf.cast(tf.range(height), tf.float32)[None, :, None] + flow[..., 0]
    cols = tf.cast(tf.range(width), tf.float32)[None, None, :] + flow[..., 1]
    r0, c0 = tf.floor(rows), tf.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])  # a ring of zeros for out-of-range reads

    def read(r, c):
        r = tf.clip_by_value(tf.cast(r, tf.int32) + 1, 0, height + 1)
        c = tf.clip_by_value(tf.cast(c, tf.int32) + 1, 0, width + 1)
        index = tf.stack([tf.broadcast_to(tf.range(batch)[:, None, None], tf.shape(r)), r, c], axis=-1)
        return tf.gather_nd(padded, index)

    top = read(r0, c0) * (1 - fc) + read(r0, c0 + 1) * fc
    bottom = read(r0 + 1, c0) * (1 - fc) + read(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


def augment_batch(images, seed, aug, normalize):
    """Augment a (B, H, W, C) float32 batch; `seed` is a shape-(2,) int tensor.

    A profile with normalize "none" (0-255 input) is augmented in [0, 1] and scaled back,
    so the same amounts mean the same change for every profile.
    """
    pixel_scale = 255.0 if normalize == "none" else 1.0
    images = images / pixel_scale
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    keys = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 9)
    if aug.flip:
        flip = tf.random.stateless_uniform([batch, 1, 1, 1], keys[0]) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    if aug.rotation_deg or aug.scale or aug.shift:
        transforms = _affine_transforms(batch, tf.cast(height, tf.float32), tf.cast(width, tf.float32), aug, keys[1])
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode=aug.fill)
    if aug.elastic:
        images = _elastic(images, aug.elastic, keys[7])
    if aug.stroke:
        images = _stroke_width(images, aug.stroke, keys[8])
    if aug.illumination:
        images = _illumination_ramp(images, aug.illumination, keys[5])
    if normalize == "standardize":
        if aug.contrast:  # a gamma-like monotone change that standardisation does not undo
            power = 1.0 + tf.random.stateless_uniform([batch, 1, 1, 1], keys[2], -1.0, 1.0) * aug.contrast
            low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
            high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
            unit = (images - low) / tf.maximum(high - low, 1e-3)
            images = tf.pow(unit, power)
    else:
        if aug.contrast:
            images = images * (1.0 + tf.random.stateless_uniform([batch, 1, 1, 1], keys[2], -1.0, 1.0) * aug.contrast)
        if aug.brightness:
            images = images + tf.random.stateless_uniform([batch, 1, 1, 1], keys[3], -1.0, 1.0) * aug.brightness
    if aug.noise:
        spread = tf.math.reduce_std(images, axis=[1, 2, 3], keepdims=True)
        images = images + tf.random.stateless_normal(tf.shape(images), keys[4]) * aug.noise * spread
    if aug.erase:
        images = _random_erase(images, aug.erase, keys[6])
    if normalize == "standardize":  # back to what `preprocess` produces: zero mean, unit variance
        mean, var = tf.nn.moments(images, axes=[1, 2, 3], keepdims=True)
        images = (images - mean) / tf.maximum(tf.sqrt(var), 1e-3)
    else:
        images = tf.clip_by_value(images, 0.0, 1.0)
    return images * pixel_scale
