"""Zoho's response envelope mapped to the ZohoError classes.

Every Zoho Books response is JSON with `code` (0 on success) and `message`.
The class follows the HTTP status and the code:

- 401 or 57: Zoho rejects the access token.
- 404 or 1002: the record does not exist.
- 429: a rate limit.
- 3062: a contact of that name exists.
- 5xx or 1000: a failure at Zoho.
- Any other 400 or 405: Zoho rejects the request.
"""

from __future__ import annotations

import re

import requests

from tshjobs.errors import (
    ZohoAuthError,
    ZohoDuplicate,
    ZohoError,
    ZohoNotFound,
    ZohoServerError,
    ZohoValidationError,
)
from tshjobs.zoho.decimal_json import decode_json

CODE_SUCCESS = 0
# NOTE: Zoho does not document 45; public Zoho clients record it on the 429
# sent when the daily limit is reached.
CODE_DAILY_LIMIT = 45
CODE_NOT_AUTHORIZED = 57
CODE_INTERNAL_ERROR = 1000
CODE_NOT_FOUND = 1002
CODE_DUPLICATE_NAME = 3062

# NOTE: Zoho documents no code of its own for a duplicate value of a unique
# custom field, so such a rejection is recognised by its message.
_DUPLICATE_MESSAGE = re.compile(r"already exists|duplicate", re.IGNORECASE)


def parse_body(response: requests.Response, method: str, path: str) -> dict:
    """Return the response's JSON object, amounts as Decimal, or raise
    ZohoServerError when the body is not a JSON object."""
    try:
        body = decode_json(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ZohoServerError(
            f"the response is not Zoho's JSON envelope: {response.text[:200]!r}",
            method=method,
            path=path,
            status=response.status_code,
        )
    return body


def is_token_rejected(response: requests.Response, body: dict) -> bool:
    """Return whether Zoho rejected the access token (HTTP 401 or code 57)."""
    return response.status_code == 401 or body.get("code") == CODE_NOT_AUTHORIZED


def error_for(
    response: requests.Response, body: dict, method: str, path: str
) -> ZohoError | None:
    """Return the error a response stands for, or None on success. A 429 is
    the caller's to handle, because it changes the rate limiter's state."""
    status = response.status_code
    code = body.get("code", CODE_SUCCESS)
    if status < 400 and code == CODE_SUCCESS:
        return None

    message = str(body.get("message") or "")
    details = {"method": method, "path": path, "status": status,
               "code": code, "zoho_message": message}  # fmt: skip
    if is_token_rejected(response, body):
        return ZohoAuthError(
            "Zoho rejected the access token after a refresh: check the "
            "client's ZohoBooks scopes and TSHJOBS_ZOHO_ORGANIZATION_ID",
            **details,
        )
    if status == 404 or code == CODE_NOT_FOUND:
        return ZohoNotFound("the record does not exist", **details)
    if status >= 500 or code == CODE_INTERNAL_ERROR:
        return ZohoServerError("Zoho failed to handle the request", **details)
    if code == CODE_DUPLICATE_NAME or (
        status == 400 and _DUPLICATE_MESSAGE.search(message)
    ):
        return ZohoDuplicate("the record would duplicate an existing one", **details)
    return ZohoValidationError("Zoho rejected the request", **details)
