"""Embedding towers: image -> L2-normalised embedding, built from built-in Keras layers and the
project's registered ones (`verifier.core.layers`; bundles are loaded with safe_mode=True, so
no Lambda).

    small              a compact VGG-style CNN with BatchNorm, a spatial (flatten) head and
                       dropout; trains on 2 CPU cores in minutes (the default)
    pixel-gradients    fixed features of grey thumbnails, the pixels and their oriented-gradient
                       cells, with a head fitted in closed form (the small-grey default)
    mobilenetv3small   keras.applications.MobileNetV3Small, weights=None, adapted to the
                       profile's channels (a larger option)
    imagenet-mobilenetv2
                       MobileNetV2's ImageNet weights (training.imagenet_mobilenet), frozen,
                       read at four depths, beside a soft colour histogram; a head fitted in
                       closed form (training.heads) or learnt (products, other photos and
                       colour thumbnails; `--trainable-stages` opens the last blocks)
    face-resnet        dlib's pretrained face ResNet (training.face_resnet) on the face
                       profile's aligned 150x150 RGB chips, with a projection head that
                       starts as the identity; fine-tuned from there (or used as it is)
    sface              OpenCV Zoo's pretrained SFace (training.sface) on the same chips, re-cut
                       in the graph to the ArcFace geometry it was trained on; the same head
    face-fusion        face-resnet and sface side by side, their unit descriptors concatenated
    pixel-gradients+patches, imagenet-mobilenetv2+patches
                       the tower beside unsupervised k-means patch features of the same
                       thumbnail (`with_patch_codes`), each under its own head (the
                       first is the small-grey default)

`with_flip_average` wraps a tower for test-time augmentation: the embedding of an image
and of its mirror image are averaged inside the saved model, so serving gets it for free.
"""

import keras
import numpy as np
from keras import layers

from verifier.core.layers import patch_codes, safe_unit_normalization, square_root

# a thumbnail tower fused with patch features -> the tower it starts from
PATCH_FUSIONS = {"pixel-gradients+patches": "pixel-gradients", "imagenet-mobilenetv2+patches": "imagenet-mobilenetv2"}
TOWERS = ("small", "ink", "gradients", "pixel-gradients", "mobilenetv3small", "imagenet-mobilenetv2", "face-resnet",
          "sface", "face-fusion", *PATCH_FUSIONS)
PRETRAINED = {"face-resnet": 128, "sface": 128, "face-fusion": 256}  # pretrained tower -> its embedding size
# the tower each profile trains by default: pretrained where weights for the kind of image exist,
# and for signatures a fixed oriented-gradient front end with a learnt head (README, Signatures)
DEFAULT_TOWER = {"face": "face-fusion", "face-chip": "face-fusion", "signature": "gradients",
                 "product": "imagenet-mobilenetv2", "product-grey": "imagenet-mobilenetv2",
                 "small-colour": "imagenet-mobilenetv2+patches", "small-grey": "pixel-gradients+patches"}
# patch features: (patch side, regions a side) by channels, as measured on Fashion-MNIST (grey)
# and CIFAR-10 (colour) folds (README); 512 centroids; thumbnails only (a code per centroid
# at every position of a photo would cost more than the rest of the tower)
PATCH_GEOMETRY = {1: (5, 4), 3: (6, 2)}
PATCH_CENTROIDS = 512
PATCH_SIDE_MAX = 64


def default_tower(profile_name):
    """The tower a profile trains unless told otherwise (`small` for the rest)."""
    return DEFAULT_TOWER.get(profile_name, "small")


def _conv_bn(x, filters, name, strides=1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def small_cnn(input_shape, embedding_size, widths=(32, 64, 128), dropout=0.3):
    """Three conv blocks (conv-BN-ReLU x2, max-pool), flatten, dropout, dense.

    The first convolution has stride 2: at 56x46 that is where most of the compute
    would go, and halving it there made the step ~5x faster on CPU. The head flattens
    the last feature map instead of averaging it away: faces (and signatures) are
    roughly aligned, so *where* a feature is matters (ORL fold 1: ~10% EER with
    flatten against 13% with global average pooling).
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, filters in enumerate(widths):
        x = _conv_bn(x, filters, f"block{i + 1}a", strides=2 if i == 0 else 1)
        x = _conv_bn(x, filters, f"block{i + 1}b")
        x = layers.MaxPooling2D(2, padding="same", name=f"block{i + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="embedding")(x)
    outputs = layers.UnitNormalization(name="l2")(x)
    return keras.Model(inputs, outputs, name="small_tower")


def ink_cnn(input_shape, embedding_size, widths=(32, 64, 128, 192), dropout=0.3):
    """Four conv blocks, then the last feature map's average and maximum over all positions.

    For signatures: the same stroke shapes appear at different places from one signature to
    the next (a writer never lays out a signature exactly alike), so the head pools positions
    away instead of flattening them as `small_cnn` does for aligned faces.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, filters in enumerate(widths):
        x = _conv_bn(x, filters, f"block{i + 1}a", strides=2 if i == 0 else 1)
        x = _conv_bn(x, filters, f"block{i + 1}b")
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(2, padding="same", name=f"block{i + 1}_pool")(x)
    x = layers.Concatenate(name="pooled")([layers.GlobalAveragePooling2D(name="avg")(x),
                                           layers.GlobalMaxPooling2D(name="max")(x)])
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="embedding")(x)
    outputs = layers.UnitNormalization(name="l2")(x)
    return keras.Model(inputs, outputs, name="ink_tower")


def _oriented_derivatives(orientations):
    """(3, 3, 1, 2 * orientations) kernels: the image's derivative along each of `orientations`
    directions over 180 degrees, with both signs (ReLU keeps one edge side in each)."""
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 8
    angles = np.arange(orientations) * np.pi / orientations
    kernels = [np.cos(a) * sobel_x + np.sin(a) * sobel_x.T for a in angles]
    kernels += [-k for k in kernels]
    return np.stack(kernels, axis=-1)[:, :, None, :]


def _gradient_cells(inputs, orientations, cell):
    """HOG's features in Keras layers: oriented derivatives (fixed 3x3 kernels, both signs),
    rectified, averaged over cells of `cell` pixels (an int, or (rows, columns)) and
    normalised per cell, flattened."""
    channels = inputs.shape[-1]
    kernels = _oriented_derivatives(orientations)
    gradients = layers.Conv2D(kernels.shape[-1], 3, padding="same", use_bias=False, trainable=False,
                              name="oriented_gradients")
    x = layers.Activation("relu", name="rectified")(gradients(inputs))
    gradients.set_weights([np.repeat(kernels, channels, axis=2) / channels])
    x = layers.AveragePooling2D(cell, padding="same", name="cells")(x)
    x = safe_unit_normalization(axis=-1, name="cell_norm")(x)  # a blank cell stays 0 (no NaN in TFLite)
    return layers.Flatten(name="flatten")(x)


def gradient_tower(input_shape, embedding_size, orientations=8, cell=8, dropout=0.3):
    """A histogram-of-oriented-gradients front end that is fixed, and a learnt metric on top.

    The dense head that maps the gradient cells to the embedding is what the Siamese losses
    learn. With few writers to learn from, a fixed front end that already separates signatures
    (HOG is the best classical baseline on random forgeries) is what a small data set can afford.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _gradient_cells(inputs, orientations, cell)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="embedding")(x)
    outputs = safe_unit_normalization(name="l2")(x)  # a blank page: the head's bias alone, never NaN
    return keras.Model(inputs, outputs, name="gradient_tower")


# pixel-gradients reads every pixel: a head fitted over more features than this (a 64 px
# square) would need covariance matrices of gigabytes
PIXEL_FEATURES_MAX = 64 * 64


def pixel_gradient_tower(input_shape, embedding_size, orientations=8, grid=4, dropout=0.0):
    """Grey thumbnails: the pixels and their oriented-gradient cells (a grid x grid of them,
    for any aspect), each block of unit length, and a head over both, fitted in closed form by
    default (training.heads). On Fashion-MNIST 4 x 4 cells of 7 px did better than 7 x 7 or 10 x 10.

    With a handful of training classes a CNN from scratch learns what tells those classes
    apart and loses to raw pixels on unseen ones (Fashion-MNIST, README); fixed features with a
    metric fitted to how the training classes' own images vary do not.
    """
    height, width, channels = input_shape
    if height * width * channels > PIXEL_FEATURES_MAX or min(height, width) < grid:
        raise ValueError(f"the pixel-gradients tower is for thumbnails of {grid} to 64 px a side "
                         f"(at most {PIXEL_FEATURES_MAX} values), not {height}x{width}x{channels}: "
                         "use a thumbnail profile (small-grey), or another tower")
    inputs = keras.Input(input_shape, name="image")
    pixels = safe_unit_normalization(name="pixel_norm")(layers.Flatten(name="pixels")(inputs))
    cell = (-(-height // grid), -(-width // grid))  # ceiling: the last cell of a row may be partly padding
    cells = safe_unit_normalization(name="gradient_norm")(_gradient_cells(inputs, orientations, cell))
    x = layers.Concatenate(name="features")([pixels, cells])
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="embedding")(x)
    outputs = safe_unit_normalization(name="l2")(x)
    return keras.Model(inputs, outputs, name="pixel_gradient_tower")


def mobilenetv3small(input_shape, embedding_size, dropout=0.2):
    """MobileNetV3Small from scratch (weights=None) on the profile's own channels."""
    backbone = keras.applications.MobileNetV3Small(
        input_shape=input_shape, include_top=False, weights=None, pooling="avg",
        include_preprocessing=False, minimalistic=False)
    inputs = keras.Input(input_shape, name="image")
    x = backbone(inputs)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="embedding")(x)
    outputs = layers.UnitNormalization(name="l2")(x)
    return keras.Model(inputs, outputs, name="mobilenetv3small_tower")


# thumbnails smaller than this (CIFAR's 32 px) are upsampled to UPSAMPLE_TO for the backbone,
# whose deeper blocks would otherwise see a single pixel
UPSAMPLE_BELOW, UPSAMPLE_TO = 96, 160


def imagenet_mobilenetv2(input_shape, embedding_size, trainable_stages=0, dropout=0.2, colour_bins=8,
                         colour_side=40):
    """Spatial averages of four depths of the pretrained MobileNetV2 and a soft colour
    histogram (bins^3 colours of the image pooled to about colour_side px, square-rooted),
    each of unit length, then a Dense projection: learnt with the loss, or fitted in closed
    form (`training.heads`, the default for this tower). Thumbnails are upsampled
    (bilinear) for the backbone only.

    Off the shelf no single depth beats a plain colour histogram on unseen grocery products,
    while the depths and the histogram together, with a metric learnt on other products, did
    (README, Products). Greyscale input is replicated to three channels for the backbone.
    """
    from training.imagenet_mobilenet import (build_backbone, fetch, read_weights, set_trainable_blocks,
                                             soft_colour_histogram)

    channels = input_shape[-1]
    inputs = keras.Input(input_shape, name="image")  # [0, 1] (a "unit" profile)
    rgb = inputs if channels == 3 else layers.Concatenate(name="grey_to_rgb")([inputs] * 3)
    side = tuple(input_shape[:2])
    if min(side) < UPSAMPLE_BELOW:
        side = tuple(UPSAMPLE_TO * s // min(side) for s in side)
        rgb = layers.Resizing(*side, interpolation="bilinear", name="upsample")(rgb)
    backbone = build_backbone(read_weights(*fetch()), side + (3,))
    set_trainable_blocks(backbone, trainable_stages)
    taps = backbone(layers.Rescaling(2.0, offset=-1.0, name="to_signed")(rgb))
    pooled = [safe_unit_normalization(name=f"tap{i}_norm")(layers.GlobalAveragePooling2D(name=f"tap{i}_avg")(tap))
              for i, tap in enumerate(taps)]
    colour = soft_colour_histogram(inputs, colour_bins if channels == 3 else 16, colour_side)
    hellinger = square_root(name="colour_sqrt")(colour)  # unit length already: the histogram sums to 1
    x = layers.Concatenate(name="features")(pooled + [hellinger])
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="embedding")(x)
    outputs = safe_unit_normalization(name="l2")(x)
    return keras.Model(inputs, outputs, name="imagenet_mobilenetv2_tower")


def face_resnet(input_shape, embedding_size, trainable_stages=0):
    """The pretrained face ResNet, then a Dense projection initialised to the identity and an
    L2 normalisation: untrained, it is the pretrained descriptor (unit length).

    trainable_stages: how many of the backbone's last stages fine-tuning may change (0: the
    backbone is frozen and only the projection learns; len(STAGES): all of it). With a few
    hundred identities, freezing most of a network trained on 7,485 keeps what it knows.
    """
    from training.face_resnet import (EMBEDDING_SIZE, STAGES, build_face_resnet, fetch_face_api, read_weights,
                                      set_trainable_from)

    _check_face_chip("face-resnet", input_shape, embedding_size, EMBEDDING_SIZE)
    if not 0 <= trainable_stages <= len(STAGES):
        raise ValueError(f"trainable stages must lie in 0..{len(STAGES)}, got {trainable_stages}")
    backbone = build_face_resnet(read_weights(*fetch_face_api()))
    set_trainable_from(backbone, STAGES[len(STAGES) - trainable_stages] if trainable_stages else None)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Dense(embedding_size, kernel_initializer="identity", name="projection")(backbone(inputs))
    outputs = layers.UnitNormalization(name="l2")(x)
    return keras.Model(inputs, outputs, name="face_resnet_tower")


def _chip_to_arcface(chip_size):
    """(ZeroPadding2D, Cropping2D) pads, in pixels of a `chip_size` face chip, that cut out the
    square the ArcFace template covers: the similarity transform between the two templates is a
    scale and a shift (its rotation is 0.1 degree), so a pad, a crop and a resize make the chip.
    The chip lacks the forehead's top fifth, which the pad fills with mid-grey (0 after SFace's
    scaling): on lfw-dev's 719 held-out people that measured 3.67% / 3.14% EER (dev / eval), a
    replicated edge 4.32% / 3.29%, and chips aligned to the template directly 4.23% / 3.02%."""
    from training.face_resnet import INPUT_SHAPE as DLIB_CHIP
    from training.sface import ARCFACE_TEMPLATE, INPUT_SHAPE
    from verifier.core.faces.align import similarity_transform, template_for

    if chip_size != DLIB_CHIP[0]:
        raise ValueError(f"the SFace branch reads the face profile's {DLIB_CHIP[0]}-pixel chips, not {chip_size}")
    to_chip = similarity_transform(ARCFACE_TEMPLATE, template_for(chip_size))
    corners = to_chip @ np.array([[0.0, 0.0, 1.0], [INPUT_SHAPE[1], INPUT_SHAPE[0], 1.0]]).T  # (x, y) x 2
    (left, right), (top, bottom) = (int(v) for v in np.round(corners[0])), (int(v) for v in np.round(corners[1]))
    pad = ((max(-top, 0), max(bottom - chip_size, 0)), (max(-left, 0), max(right - chip_size, 0)))
    crop = ((max(top, 0), max(chip_size - bottom, 0)), (max(left, 0), max(chip_size - right, 0)))
    return pad, crop


def sface_branch(inputs, trainable_stages=0, name="sface"):
    """The pretrained SFace descriptor of face chips `inputs` (150x150 RGB 0..255), re-cut in
    the graph to the 112x112 ArcFace geometry it was trained on; the last `trainable_stages`
    of its stages may change."""
    from training.sface import (INPUT_SHAPE, build_sface, fetch_sface, normalize, read_graph,
                                set_trainable_last)

    backbone = build_sface(read_graph(fetch_sface()), normalized_input=True)
    set_trainable_last(backbone, trainable_stages)
    pad, crop = _chip_to_arcface(inputs.shape[1])
    x = normalize(f"{name}_normalize")(inputs)
    x = layers.ZeroPadding2D(pad, name=f"{name}_grey_border")(x)
    x = layers.Cropping2D(crop, name=f"{name}_crop")(x)
    x = layers.Resizing(*INPUT_SHAPE[:2], interpolation="bilinear", name=f"{name}_chip")(x)
    return backbone(x)


def sface(input_shape, embedding_size, trainable_stages=0):
    """SFace on the face profile's chips, then a Dense projection initialised to the identity
    and an L2 normalisation (untrained: the pretrained descriptor)."""
    from training.sface import EMBEDDING_SIZE

    _check_face_chip("sface", input_shape, embedding_size, EMBEDDING_SIZE)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Dense(embedding_size, kernel_initializer="identity", name="projection")(
        sface_branch(inputs, trainable_stages))
    return keras.Model(inputs, layers.UnitNormalization(name="l2")(x), name="sface_tower")


def face_fusion(input_shape, embedding_size, trainable_stages=0):
    """dlib's face ResNet and SFace side by side on the same chip: each descriptor projected
    (identity at first) and L2-normalised, then the two concatenated and normalised again, so
    the cosine of two embeddings is the mean of the two networks' cosines. Networks trained
    on different faces err on different pairs: on lfw-dev's 719 held-out people the fusion of
    the two as they are made fewer errors than either (README, Faces). `trainable_stages`
    opens the face ResNet's last stages; SFace stays frozen under its trainable projection."""
    from training import face_resnet as dlib_resnet
    from training import sface as sface_net

    _check_face_chip("face-fusion", input_shape, embedding_size, PRETRAINED["face-fusion"])
    resnet = face_resnet(input_shape, dlib_resnet.EMBEDDING_SIZE, trainable_stages)
    inputs = keras.Input(input_shape, name="image")
    second = layers.Dense(sface_net.EMBEDDING_SIZE, kernel_initializer="identity", name="sface_projection")(
        sface_branch(inputs))
    parts = [resnet(inputs), layers.UnitNormalization(name="sface_l2")(second)]
    outputs = layers.UnitNormalization(name="l2")(layers.Concatenate(name="fused")(parts))
    return keras.Model(inputs, outputs, name="face_fusion_tower")


def _check_face_chip(tower, input_shape, embedding_size, size):
    from training.face_resnet import INPUT_SHAPE

    if tuple(input_shape) != INPUT_SHAPE or embedding_size != size:
        raise ValueError(f"the {tower} tower takes {INPUT_SHAPE} chips (the face or face-chip profile) "
                         f"and gives {size}-d embeddings; got input {tuple(input_shape)}, "
                         f"embedding size {embedding_size}")


def with_patch_codes(tower, embedding_size):
    """`tower` beside k-means patch features of its own input (verifier.core.layers PatchCodes,
    fitted by training.patch_codes), square-rooted and of unit length under a Dense head of
    their own (`patch_embedding`, fitted or learnt like the tower's `embedding`); the two unit
    embeddings concatenated and normalised again, so that a cosine is the mean of the two.

    Fixed patch features see textures and strokes that neither raw pixels nor a backbone
    trained on photos describe well; on Fashion-MNIST's and CIFAR-10's unseen classes the two
    together erred less than the tower alone (README).
    """
    height, width, channels = tower.input_shape[1:]
    if max(height, width) > PATCH_SIDE_MAX or channels not in PATCH_GEOMETRY:
        raise ValueError(f"patch features are for grey or colour thumbnails of at most {PATCH_SIDE_MAX} px a side, "
                         f"not {height}x{width}x{channels}: use a thumbnail profile (small-grey, small-colour)")
    patch_size, grid = PATCH_GEOMETRY[channels]
    codes = patch_codes(patch_size=patch_size, centroids=PATCH_CENTROIDS, grid=grid, name="patch_codes")(tower.input)
    codes = safe_unit_normalization(name="patch_norm")(square_root(name="patch_sqrt")(codes))
    patches = safe_unit_normalization(name="patch_l2")(layers.Dense(embedding_size, name="patch_embedding")(codes))
    fused = layers.Concatenate(name="fused")([tower.output, patches])
    return keras.Model(tower.input, safe_unit_normalization(name="fused_l2")(fused), name=f"{tower.name}_patches")


def build_tower(name, input_shape, embedding_size, dropout=0.3, trainable_stages=0):
    if name in PATCH_FUSIONS:
        if embedding_size % 2:
            raise ValueError(f"the {name} tower splits its embedding in two halves: {embedding_size} is odd")
        half = embedding_size // 2
        return with_patch_codes(build_tower(PATCH_FUSIONS[name], input_shape, half, dropout, trainable_stages), half)
    if name == "small":
        return small_cnn(input_shape, embedding_size, dropout=dropout)
    if name == "ink":
        return ink_cnn(input_shape, embedding_size, dropout=dropout)
    if name == "gradients":
        return gradient_tower(input_shape, embedding_size, dropout=dropout)
    if name == "pixel-gradients":
        return pixel_gradient_tower(input_shape, embedding_size, dropout=dropout)
    if name == "mobilenetv3small":
        return mobilenetv3small(input_shape, embedding_size, dropout=dropout)
    if name == "imagenet-mobilenetv2":
        return imagenet_mobilenetv2(input_shape, embedding_size, trainable_stages, dropout=dropout)
    if name == "face-resnet":
        return face_resnet(input_shape, embedding_size, trainable_stages)
    if name == "sface":
        return sface(input_shape, embedding_size, trainable_stages)
    if name == "face-fusion":
        return face_fusion(input_shape, embedding_size, trainable_stages)
    raise ValueError(f"unknown tower {name!r}; known: {', '.join(TOWERS)}")


def _mirror(x, width, name):
    """Horizontal flip with built-in layers: move width last, multiply by a fixed
    anti-diagonal matrix (a frozen Dense), move it back."""
    x = layers.Permute((1, 3, 2), name=f"{name}_width_last")(x)
    dense = layers.Dense(width, use_bias=False, trainable=False, name=f"{name}_reverse")
    x = dense(x)
    dense.set_weights([np.eye(width, dtype=np.float32)[::-1]])
    return layers.Permute((1, 3, 2), name=f"{name}_width_back")(x)


def with_flip_average(tower):
    """A model whose embedding is the normalised mean of tower(x) and tower(mirror(x))."""
    inputs = keras.Input(tower.input_shape[1:], name="image")
    mirrored = _mirror(inputs, tower.input_shape[2], "mirror")
    mean = layers.Average(name="flip_average")([tower(inputs), tower(mirrored)])
    outputs = layers.UnitNormalization(name="l2")(mean)
    return keras.Model(inputs, outputs, name=f"{tower.name}_flip_tta")
