"""Errors the verifier raises for bad input, each with an HTTP status and a stable code.

The Flask app turns any `VerifierError` into `{"error": {"code", "message"}}` with its
status; the CLIs print the message and exit non-zero. Nothing else needs a traceback.
"""


class VerifierError(Exception):
    """Base class: a user-facing failure with a status and a machine-readable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message, *, code=None, status=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class UnsupportedImage(VerifierError):
    """The bytes are not an image format we decode (415)."""

    status = 415
    code = "unsupported_image"


class CorruptImage(VerifierError):
    """A known image format whose data is truncated or broken (422)."""

    status = 422
    code = "corrupt_image"


class ImageTooLarge(VerifierError):
    """Too many bytes or too many pixels; refused before a full decode (413)."""

    status = 413
    code = "image_too_large"


class ImageTooSmall(VerifierError):
    """Decodes, but too small to hold anything to compare (422)."""

    status = 422
    code = "image_too_small"


class BundleError(VerifierError):
    """A model bundle that is missing, corrupt or incompatible (503 when serving)."""

    status = 503
    code = "bundle_error"


class DatasetError(VerifierError):
    """An image folder or built-in data set that cannot be used as asked."""

    code = "dataset_error"
