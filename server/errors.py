"""The server's error vocabulary. Handlers and the store raise these; one middleware maps them to HTTP.

``reason_code`` is the 2030.5 Error reasonCode: 0 invalid request format, 1 invalid request values,
2 resource limit reached. ``detail`` names the field or problem; it goes to the log and the
``X-Error-Detail`` header (2030.5's Error body has no free-text field).
"""

from __future__ import annotations

INVALID_FORMAT = 0
INVALID_VALUES = 1
RESOURCE_LIMIT = 2


class ApiError(Exception):
    status = 400
    default_reason = INVALID_VALUES

    def __init__(self, detail: str, *, reason_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason_code = self.default_reason if reason_code is None else reason_code


class BadRequest(ApiError):
    status = 400


class Unauthenticated(ApiError):
    """No usable client certificate. 2030.5 has no 401 flow; we answer 403."""

    status = 403


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class RequestTimeout(ApiError):
    status = 408


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413
    default_reason = RESOURCE_LIMIT


class UnsupportedMediaType(ApiError):
    status = 415
    default_reason = INVALID_FORMAT
