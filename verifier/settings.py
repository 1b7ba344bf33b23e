"""The verifier's settings: one table of name -> (environment variable, default, type).

The web app (`verifier.web.app`) and the CLI (`verifier.cli`) both read them here, so a
default is written once. Plain Python: importing this loads no web code.
"""

import os
from pathlib import Path

from verifier.core import images, modalities

DEFAULT_BUNDLE = "bundles/face"  # the face pipeline; the default (first) modality
SIGNATURE_BUNDLE = "bundles/signature"  # served too, as `signature`, when it holds a bundle


def default_bundles():
    """VERIFIER_BUNDLE's default: `face=bundles/face`, plus `signature=bundles/signature` when that
    directory holds a bundle.json (paths relative to the working directory, like the default store)."""
    text = f"face={DEFAULT_BUNDLE}"
    if (Path(SIGNATURE_BUNDLE) / "bundle.json").is_file():
        text += f",signature={SIGNATURE_BUNDLE}"
    return text


def bundles(text=None):
    """{modality: bundle path} served, in order (the first is the default): from `text`, else
    VERIFIER_BUNDLE, else `default_bundles()`. VERIFIER_BUNDLE is a PATH (named from its bundle's
    profile) or NAME=PATH[,NAME=PATH...]; a bad one is a ValueError naming the variable."""
    if text is None:
        text = get("VERIFIER_BUNDLE")
    try:
        return modalities.parse_bundles(text)
    except ValueError as exc:
        raise ValueError(f"VERIFIER_BUNDLE={text!r}: {exc}") from None


def default_bundle_spec():
    """The enrollment commands' default --bundle: VERIFIER_BUNDLE's first entry, with its name if it has one."""
    return modalities.first_spec(get("VERIFIER_BUNDLE"))


def default_bundle_path():
    """The single bundle of the one-bundle commands (verify, export, enroll...): VERIFIER_BUNDLE's first path."""
    return modalities.first_path(get("VERIFIER_BUNDLE"))


def flag(text):
    """A yes/no environment value: 1, true, yes or on (any case) is yes."""
    return str(text).strip().lower() in ("1", "true", "yes", "on")


# Setting -> (environment variable, default, type). The environment overrides the default;
# the web app's `config` overrides both.
SETTINGS = {
    # The served bundles: PATH, or NAME=PATH[,NAME=PATH...] (see `bundles`); default `default_bundles()`.
    "VERIFIER_BUNDLE": ("VERIFIER_BUNDLE", default_bundles, str),
    "MAX_CONTENT_LENGTH": ("VERIFIER_MAX_CONTENT_LENGTH", 24 * 1024 * 1024, int),  # whole request
    "MAX_IMAGE_BYTES": ("VERIFIER_MAX_IMAGE_BYTES", images.MAX_BYTES, int),  # one image
    "MAX_PIXELS": ("VERIFIER_MAX_PIXELS", images.MAX_PIXELS, int),  # one decoded image
    "MAX_REQUEST_PIXELS": ("VERIFIER_MAX_REQUEST_PIXELS", 16 * images.MAX_PIXELS, int),  # all images of a request
    "MAX_BATCH_PAIRS": ("VERIFIER_MAX_BATCH_PAIRS", 64, int),
    # Threads a worker's scorer spreads one request's images over while it has no other at work;
    # 0: one per CPU, at most 4. 1 keeps every request on its own thread.
    "SCORER_THREADS": ("VERIFIER_SCORER_THREADS", 0, int),
    "DATABASE_URL": ("DATABASE_URL", None, str),  # enrollment store; None: the store's default
    "KEEP_IMAGES": ("VERIFIER_KEEP_IMAGES", False, flag),  # keep enrolled images for `reembed`
    # Which routes need an API key once keys exist: `all` (enrollment, /v1/verify*, /metrics)
    # or `enrollment` (subjects, identify); see verifier.web.auth.
    "PROTECT": ("VERIFIER_PROTECT", "all", str),
    # `serve` on a non-loopback host with no API key: refused unless this (or --allow-anonymous).
    "ALLOW_ANONYMOUS": ("VERIFIER_ALLOW_ANONYMOUS", False, flag),
    # Whether the web app may create a missing SQLite file. `serve` makes it only on purpose
    # (--create-store, or the default path) and gives its workers 0: a store moved away is a 503.
    "CREATE_STORE": ("VERIFIER_CREATE_STORE", True, flag),
}


def get(name):
    """One setting: its environment variable when set (and not empty), else its default."""
    env, default, kind = SETTINGS[name]
    raw = os.environ.get(env)
    if raw in (None, ""):
        return default() if callable(default) else default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {env}={raw!r} is not a valid {kind.__name__}") from None


def load(config=None):
    """Every setting from the environment (or its default), then the explicit `config` (dict or object)."""
    values = {name: get(name) for name in SETTINGS}
    if config is not None:
        items = config.items() if isinstance(config, dict) else (
            (key, getattr(config, key)) for key in dir(config) if key.isupper())
        values.update(items)
    return values
