"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""

import hashlib
import json
import os
import tempfile
from pathlib import Path


def file_sha256(path):
    """The hex sha256 of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def write_bytes_atomic(path, data):
    """Write `data` next to `path` and rename it into place (readable by other users, 0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a bundle from a service running as another user
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, data):
    """Write `data` as indented, key-sorted JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def replace_with(path, write):
    """Call `write(tmp_path)` to fill a temporary file beside `path`, then rename it into place.

    For writers that want a file name rather than bytes (Keras `model.save`, `np.savez`);
    `tmp_path` keeps `path`'s suffix, which such writers check.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
