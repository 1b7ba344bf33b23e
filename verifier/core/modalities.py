"""Modalities: the names under which the service serves its bundles (``face``, ``signature``, ...).

A modality is one served bundle. The service can serve several at once; each request names
its modality (absent: the default, the first one given) and each subject belongs to the
modality that created it. Bundles are given as text, on the command line or in
VERIFIER_BUNDLE:

    bundles/face                                   a bare path: named from its profile
    face=bundles/face,signature=bundles/signature  NAME=PATH, comma-separated

A bare path is named after its bundle's preprocessing profile (`modality_for_profile`:
``face``, ``face-chip`` and ``face-small`` are all ``face``); when its bundle.json cannot be
read, after its directory (a broken bundle still gets a name, and answers 503 when used).
Plain Python (JSON only): no TensorFlow, no web code.
"""

import re
from pathlib import Path

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
NAME = re.compile(NAME_PATTERN)
# Profiles that are one modality under another profile name.
PROFILE_MODALITY = {"face": "face", "face-chip": "face", "face-small": "face", "signature": "signature"}


def modality_for_profile(profile_name):
    """The modality a profile serves: every face profile is ``face``; any other profile is its own name."""
    return PROFILE_MODALITY.get(profile_name, profile_name)


def check_name(name):
    """A modality name: 1-32 lower-case letters, digits, `_` or `-`, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"bad modality name {name!r}: use 1-32 lower-case letters, digits, _ or -, "
                         "starting with a letter or digit (e.g. face=bundles/face)")
    return name


def parse_specs(items):
    """Bundle text -> [(name or None, path)], in order, without reading any bundle.

    `items` is one string or a list of strings; each is a comma-separated list of `PATH` or
    `NAME=PATH`. An empty entry, an empty name or an empty path is a ValueError.
    """
    if isinstance(items, str):
        items = [items]
    specs = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("empty bundle: give PATH or NAME=PATH")
        for part in item.split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty entry in the bundle list {item!r}: give PATH or NAME=PATH, "
                                 "separated by commas")
            name, sep, path = part.partition("=")
            if not sep or "/" in name or "\\" in name:  # a path (that may hold `=` further on)
                specs.append((None, part))
                continue
            name, path = name.strip(), path.strip()
            if not name:
                raise ValueError(f"empty modality name in {part!r}: give NAME=PATH (e.g. face=bundles/face)")
            if not path:
                raise ValueError(f"empty bundle path in {part!r}: give NAME=PATH (e.g. face=bundles/face)")
            specs.append((check_name(name), path))
    if not specs:
        raise ValueError("no bundle given: give PATH or NAME=PATH")
    return specs


def name_of_bundle(path):
    """The modality a bare bundle path serves: from its bundle.json's profile, else its directory's name."""
    from verifier.core.bundle import read_meta
    from verifier.core.errors import VerifierError

    try:
        return modality_for_profile(read_meta(path)["profile"]["name"])
    except (VerifierError, KeyError, TypeError):
        fallback = Path(path).name.lower()
        return fallback if NAME.fullmatch(fallback) else "default"


def parse_bundles(items, *, name_of=name_of_bundle):
    """Bundle text (see `parse_specs`) -> {modality: path}, in the order given (the first is the default).

    Bare paths are named by `name_of(path)`. Two bundles under one name is a ValueError.
    """
    bundles = {}
    for name, path in parse_specs(items):
        named = name if name is not None else check_name(name_of(path))
        if named in bundles:
            how = "" if name is not None else f" (named from its profile: give NAME={path} to serve both)"
            raise ValueError(f"modality {named!r} is given twice ({bundles[named]} and {path}){how}")
        bundles[named] = path
    return bundles


def first_path(items):
    """The path of the first (default) bundle in bundle text, without reading any bundle."""
    return parse_specs(items)[0][1]


def first_spec(items):
    """The first (default) bundle in bundle text as `NAME=PATH` (or `PATH` where it has no name)."""
    name, path = parse_specs(items)[0]
    return path if name is None else f"{name}={path}"


def format_bundles(bundles):
    """{modality: path} -> `NAME=PATH,NAME=PATH` (what `parse_bundles` reads back)."""
    return ",".join(f"{name}={path}" for name, path in bundles.items())
