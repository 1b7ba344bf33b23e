"""API keys: created once, shown once, stored only as a SHA-256 hash.

A key is 32 random bytes (URL-safe base64 with a `vk_` prefix), so a plain SHA-256 of it
cannot be brute-forced and lookup by hash needs no slow password hash. While no active
key exists the enrollment routes are open (the quick start binds to loopback only); once
one exists, every request to them needs `X-API-Key` with an active key, else 401.
"""

import hashlib
import secrets

from verifier.core.errors import VerifierError

HEADER = "X-API-Key"
PREFIX = "vk_"


class Unauthorized(VerifierError):
    """A missing, wrong or revoked API key (401)."""

    status = 401
    code = "unauthorized"


def hash_key(key):
    """The stored form of a key: hex SHA-256 of its text."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store, name):
    """Make and store a new key; returns (the key, shown only now, and its record)."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, store.add_key(name, hash_key(key))


def require_key(store, presented):
    """Raise Unauthorized unless no active key exists or `presented` is one of them."""
    any_key, ok = store.key_status(hash_key(presented) if presented else None)
    if any_key and not ok:
        if presented:
            raise Unauthorized(f"the {HEADER} header does not name an active API key")
        raise Unauthorized(f"this route needs an API key in the {HEADER} header")
