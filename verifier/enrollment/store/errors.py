"""Errors of the enrollment store, each a `VerifierError` with its HTTP status."""

import logging

from verifier.core.errors import VerifierError

log = logging.getLogger("verifier.enrollment.store")


class NotFound(VerifierError):
    """A subject, template or key that does not exist (404)."""

    status = 404
    code = "not_found"


class Conflict(VerifierError):
    """The request clashes with what is stored: a duplicate id, templates of another bundle (409)."""

    status = 409
    code = "conflict"


class IntegrityConflict(Conflict):
    """A write the database refused for a constraint (a duplicate key hash, a vanished subject) (409)."""

    code = "integrity_conflict"


class StoreUnavailable(VerifierError):
    """The database cannot be reached or opened: a missing directory, a server that is down (503).

    `message` is what an HTTP client sees: "store unavailable" and a cause, never a path, a
    host or the driver's text. `detail` (also `str(exc)`) has those for operators; it is
    logged where the error is raised and printed by the CLI.
    """

    status = 503
    code = "store_unavailable"

    def __init__(self, message, *, detail=None, code=None):
        super().__init__(f"store unavailable: {message}", code=code)
        self.detail = detail or self.message
        log.warning("%s", self.detail)

    def __str__(self):
        return self.detail


class ConnectionLost(StoreUnavailable):
    """An open connection broke under an operation (a restarted server): a read may run again (503)."""
