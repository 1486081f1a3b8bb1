"""Refusals the service answers with: an HTTP status, a short machine-readable code and a message that says what
was wrong and what to do. Every error response body is ``{"error": CODE, "detail": MESSAGE}``."""
from __future__ import annotations

from ..errors import FaceAnonyMixerError


class ApiError(FaceAnonyMixerError):
    """A request the service refuses (raised by the server's checks; also what ``Client`` raises)."""

    def __init__(self, status: int, error: str, detail: str,  # HTTP status, short code, message for the user
                 headers: dict | None = None):                  # extra response headers (Retry-After)
        super().__init__(f"{detail} (HTTP {status} {error})")
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail)


def too_large(detail: str) -> ApiError:
    return ApiError(413, "too_large", detail)


def unsupported(detail: str) -> ApiError:
    return ApiError(415, "unsupported_media_type", detail)


def invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_request", detail)
