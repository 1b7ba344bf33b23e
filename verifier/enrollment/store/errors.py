"""Errors of the enrollment store, each a `VerifierError` with its HTTP status."""

from verifier.core.errors import VerifierError


class NotFound(VerifierError):
    """A subject, template or key that does not exist (404)."""

    status = 404
    code = "not_found"


class Conflict(VerifierError):
    """The request clashes with what is stored: a duplicate id, templates of another bundle (409)."""

    status = 409
    code = "conflict"


class StoreUnavailable(VerifierError):
    """The database cannot be reached or opened: a missing directory, a server that is down (503)."""

    status = 503
    code = "store_unavailable"
