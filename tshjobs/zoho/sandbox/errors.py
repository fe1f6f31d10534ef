"""Error replies of the Books API: HTTP status, Zoho `code` and message.

Codes 0, 57, 1000, 1002, 1038 and 3062 are the ones Zoho documents. Code 45
and its message for the daily limit, 6041 for a wrong organisation and 5 for
an unknown URL are what public Zoho clients record from real replies. The
others (2, 4, 44, 1001 and the 405 body) are the sandbox's choices, listed in
docs/zoho-sandbox.md.
"""

from __future__ import annotations

SUCCESS = 0
INVALID_QUERY_VALUE = 2
INVALID_FIELD_VALUE = 4
UNKNOWN_URL = 5
TOO_MANY_REQUESTS = 44
DAILY_LIMIT_REACHED = 45
NOT_AUTHORIZED = 57
INTERNAL_ERROR = 1000
ALREADY_EXISTS = 1001
DOES_NOT_EXIST = 1002
JSON_NOT_WELL_FORMED = 1038
CONTACT_NAME_EXISTS = 3062
WRONG_ORGANIZATION = 6041


class ApiError(Exception):
    """Raised by the Books API code to send an error reply."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"code": self.code, "message": self.message}


def invalid_field(field: str, reason: str) -> ApiError:
    """Return the 400 reply for a body field with a bad or missing value."""
    return ApiError(
        400, INVALID_FIELD_VALUE, f"Invalid value passed for {field}: {reason}"
    )


def invalid_query(parameter: str, reason: str) -> ApiError:
    """Return the 400 reply for a bad query parameter."""
    return ApiError(
        400, INVALID_QUERY_VALUE, f"Invalid value passed for {parameter}: {reason}"
    )


def not_found(noun: str) -> ApiError:
    """Return the 404 reply for an id that no record has, e.g. 'Contact'."""
    return ApiError(404, DOES_NOT_EXIST, f"{noun} does not exist.")


def already_exists(message: str) -> ApiError:
    return ApiError(400, ALREADY_EXISTS, message)


def too_many_requests() -> ApiError:
    """Return the 429 reply for the per-minute and concurrency limits."""
    return ApiError(
        429,
        TOO_MANY_REQUESTS,
        "You have made too many requests continuously. "
        "Please try again after some time.",
    )


def daily_limit_reached(limit: int) -> ApiError:
    return ApiError(
        429,
        DAILY_LIMIT_REACHED,
        "The API call for this organization has exceeded the maximum call "
        f"rate limit of {limit:,}",
    )


def not_authorized() -> ApiError:
    return ApiError(
        401, NOT_AUTHORIZED, "You are not authorized to perform this operation"
    )


def internal_error() -> ApiError:
    return ApiError(500, INTERNAL_ERROR, "Internal error")
