"""The refusals a client of the service gets: an HTTP status, a short code and a sentence saying what to fix."""
from __future__ import annotations


class RequestError(ValueError):
    """A request the service cannot answer as asked. ``status`` is the HTTP status (4xx), ``code`` the short name
    the X-AnyLabeling door reports (``INVALID_PARAMS``, ``INVALID_IMAGE``, ...); the message is a sentence."""

    status = 400
    code = "INVALID_PARAMS"

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class ImageError(RequestError):
    """An image that cannot be used: not decodable, too large, or from a place the service may not read."""

    status = 422
    code = "INVALID_IMAGE"


class ForbiddenSourceError(ImageError):
    """An image address outside what the service may read (another host, a path outside ``--allowed-root``)."""

    status = 403


class ModelNotFoundError(RequestError):
    """A model name the service does not serve."""

    status = 404
    code = "MODEL_NOT_FOUND"
