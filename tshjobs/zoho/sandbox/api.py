"""Routing of Books API paths to `Books` calls, with the checks of every call:
the access token and the organization_id parameter."""

from __future__ import annotations

from flask import Request

from tshjobs.zoho.sandbox import amounts
from tshjobs.zoho.sandbox.books import KINDS, Books, success
from tshjobs.zoho.sandbox.config import SandboxConfig
from tshjobs.zoho.sandbox.errors import (
    JSON_NOT_WELL_FORMED,
    UNKNOWN_URL,
    WRONG_ORGANIZATION,
    ApiError,
    invalid_query,
    not_authorized,
)
from tshjobs.zoho.sandbox.tokens import TokenIssuer

AUTH_SCHEME = "zoho-oauthtoken"


def authorize(request: Request, tokens: TokenIssuer) -> None:
    """Raise 401 code 57 unless the request carries a live access token."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != AUTH_SCHEME or not tokens.is_valid(token.strip()):
        raise not_authorized()


def check_organization(request: Request, path: str, config: SandboxConfig) -> None:
    """Raise unless the call names the sandbox's organisation.

    GET /organizations lists the organisations and needs no organization_id,
    as in Zoho; GET /organizations/{id} names it in the path.
    """
    segments = path.strip("/").split("/")
    organization_id = request.args.get("organization_id")
    if segments[0] == "organizations":
        if len(segments) > 1:
            organization_id = segments[1]
        if not organization_id:
            return

    if not organization_id:
        raise invalid_query("organization_id", "the parameter is required")
    if organization_id != config.organization_id:
        raise ApiError(
            400,
            WRONG_ORGANIZATION,
            "This user is not associated with the "
            f"CompanyID/CompanyName:{organization_id}.",
        )


def route(books: Books, request: Request, path: str) -> tuple[int, dict]:
    """Run the Books call for this method and path; return (status, body)."""
    segments = path.strip("/").split("/")
    method = request.method

    if segments[0] == "organizations" and len(segments) <= 2:
        _allow(method, ("GET",))
        if len(segments) == 1:
            return 200, success(organizations=[books.organization()])
        return 200, success(organization=books.organization())

    kind = KINDS.get(segments[0])
    if kind is None or len(segments) > 2:
        raise ApiError(404, UNKNOWN_URL, "Invalid URL Passed")
    query = request.args.to_dict()

    if len(segments) == 2:
        _allow(method, ("GET", "PUT"))
        if method == "GET":
            return 200, books.get(kind, segments[1])
        return 200, books.update(kind, segments[1], read_payload(request), query)

    _allow(method, ("GET", "POST", "PUT"))
    if method == "GET":
        return 200, books.list(kind, query)
    if method == "POST":
        return 201, books.create(kind, read_payload(request), query)
    return books.upsert(
        kind,
        request.headers.get("X-Unique-Identifier-Key"),
        request.headers.get("X-Unique-Identifier-Value"),
        request.headers.get("X-Upsert", "").strip().lower() == "true",
        read_payload(request),
        query,
    )


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ApiError(
            405,
            UNKNOWN_URL,
            f"The {method} method is not supported for this URL; use "
            f"{' or '.join(allowed)}.",
        )


def read_payload(request: Request) -> dict:
    """Return the JSON object of the body: raw JSON, or the JSONString form
    field of the older form-encoded requests. Numbers become Decimal."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        text = request.form.get("JSONString", "")
    else:
        text = request.get_data()
    if not text:
        return {}

    try:
        payload = amounts.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ApiError(400, JSON_NOT_WELL_FORMED, "JSON is not well formed")
    return payload
