"""Which routes need an API key, and with which scope; checked before each request.

A view states what it needs with `@needs_key(scope)` (the enrollment routes: always, once
a key was ever created) or `@needs_key(scope, group=SERVICE)` (verify and /metrics: only
when `VERIFIER_PROTECT=all`, the default; `enrollment` leaves them open). Its OpenAPI
fragment declares the same with `SECURITY` and `AUTH_ERRORS`. Unmarked routes (/healthz,
/readyz, /openapi.json, the page, /v1/calibration) never need a key.
"""

from flask import request

from verifier.enrollment.keys import HEADER, require_key
from verifier.web.extensions import get_store
from verifier.web.openapi import SECURITY_SCHEMES, error_response

ENROLLMENT, SERVICE = "enrollment", "service"
PROTECT = {"all": {ENROLLMENT, SERVICE}, "enrollment": {ENROLLMENT}}  # VERIFIER_PROTECT -> groups checked
# A key, or none: while no key was ever created, or when VERIFIER_PROTECT leaves the route open.
SECURITY = [{name: []} for name in SECURITY_SCHEMES] + [{}]
AUTH_ERRORS = {
    "401": error_response("A key was created in this store (auth stays on) and X-API-Key is missing, wrong "
                          "or revoked, or no key is active."),
    "403": error_response("The key is valid but its scope does not cover this route (`read` keys cannot "
                          "create, enroll or delete)."),
}


def needs_key(scope, group=ENROLLMENT):
    """Mark a view as needing a key with `scope` (read or write) when its group is protected."""
    def mark(view):
        view.key_requirement = (scope, group)
        return view
    return mark


def init_app(app):
    """Check keys before each request to a marked view whose group `PROTECT` covers."""
    setting = app.config["PROTECT"]
    if setting not in PROTECT:
        raise ValueError(f"VERIFIER_PROTECT={setting!r}: use one of {', '.join(PROTECT)}")
    groups = PROTECT[setting]

    @app.before_request
    def check_api_key():
        view = app.view_functions.get(request.endpoint)
        scope, group = getattr(view, "key_requirement", (None, None))
        if group in groups:
            require_key(get_store(), request.headers.get(HEADER), scope)
