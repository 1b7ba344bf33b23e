"""API keys: created once, shown once, stored only as a SHA-256 hash, each with a scope.

A key is 32 random bytes (URL-safe base64 with a `vk_` prefix), so a plain SHA-256 of it
cannot be brute-forced and lookup by hash needs no slow password hash. Scopes: `read`
(verify, identify, list and show subjects, metrics) and `write` (also create, enroll,
delete); write implies read. Auth fails closed: creating the first key records in the
store that auth is enabled, and from then on a protected route needs an active key in
`X-API-Key` (401 without one, 403 for a key without the scope), even after the last key
is revoked. Before the first key, protected routes are open: `serve` refuses to expose
such a store beyond loopback unless told `--allow-anonymous`.
"""

import hashlib
import secrets

from verifier.core.errors import VerifierError
from verifier.enrollment.store.base import KEY_SCOPES

HEADER = "X-API-Key"
PREFIX = "vk_"
READ, WRITE = KEY_SCOPES
CREATE_HINT = "python -m verifier keys create --name NAME [--scope read|write]"


class Unauthorized(VerifierError):
    """A missing, wrong or revoked API key (401)."""

    status = 401
    code = "unauthorized"


class Forbidden(VerifierError):
    """A valid key whose scope does not cover the route (403)."""

    status = 403
    code = "forbidden"


def hash_key(key):
    """The stored form of a key: hex SHA-256 of its text."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store, name, scope=WRITE):
    """Make and store a new key; returns (the key, shown only now, and its record)."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, store.add_key(name, hash_key(key), scope)


def key_state(store):
    """(whether a key was ever created in this store, whether one is active now)."""
    return store.key_status(None)[:2]


def require_key(store, presented, scope=READ):
    """Raise Unauthorized or Forbidden unless auth was never enabled or `presented` is an active key with `scope`."""
    enabled, active, key_scope = store.key_status(hash_key(presented) if presented else None)
    if not enabled:
        return
    if not active:
        raise Unauthorized(f"no active API key: create one with `{CREATE_HINT}` (auth stays on once enabled)")
    if key_scope is None:
        if presented:
            raise Unauthorized(f"the {HEADER} header does not name an active API key")
        raise Unauthorized(f"this route needs an API key in the {HEADER} header")
    if scope == WRITE and key_scope != WRITE:
        raise Forbidden(f"this API key has scope {key_scope!r}; this route needs {scope!r}")
