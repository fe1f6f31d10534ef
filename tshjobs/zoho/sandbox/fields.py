"""Checks and conversions shared by every entity: text, dates, custom fields."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime

from tshjobs.zoho.sandbox.config import SandboxConfig
from tshjobs.zoho.sandbox.errors import invalid_field
from tshjobs.zoho.sandbox.store import RecordStore

# Custom fields whose values must be unique within one entity type.
UNIQUE_CUSTOM_FIELDS = ("cf_erp_id",)

DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class Context:
    """Request details and settings that a record builder reads besides the body."""

    config: SandboxConfig
    store: RecordStore
    now: datetime  # aware, in the organisation's time zone
    query: dict[str, str]

    def timestamp(self) -> str:
        # Zoho writes times as 2024-05-01T10:15:00+0300.
        return self.now.strftime("%Y-%m-%dT%H:%M:%S%z")

    def today(self) -> str:
        return self.now.date().isoformat()

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() == "true"


def name_key(text: str) -> str:
    """Return the form in which two names count as the same name.

    NFC normalisation makes a precomposed and a decomposed "é" equal, and case
    folding makes "ACME" equal "acme". Diacritics and inner spaces still count:
    "Café" and "Cafe" are two names.
    """
    return unicodedata.normalize("NFC", text).strip().casefold()


def text(payload: dict, field: str, *, max_length: int | None = None) -> str | None:
    """Return the string field, or None when absent; reject other types."""
    value = payload.get(field)
    if value is None:
        return None

    if not isinstance(value, str):
        raise invalid_field(field, "expected a string")
    if max_length is not None and len(value) > max_length:
        raise invalid_field(
            field, f"{len(value)} characters, the maximum is {max_length}"
        )
    return value


def required_text(payload: dict, field: str, *, max_length: int | None = None) -> str:
    value = text(payload, field, max_length=max_length)
    if value is None or not value.strip():
        raise invalid_field(field, "a value is required")
    return value


def iso_date(payload: dict, field: str, default: str) -> str:
    """Return the yyyy-mm-dd date field, or default when it is absent."""
    value = payload.get(field)
    if value is None or value == "":
        return default

    if not isinstance(value, str) or not DATE_PATTERN.fullmatch(value):
        raise invalid_field(field, f"expected a date as yyyy-mm-dd, not {value!r}")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise invalid_field(field, f"{value} is not a calendar date") from None
    return value


def choice(payload: dict, field: str, allowed: tuple[str, ...], default: str) -> str:
    value = payload.get(field, default)
    if value not in allowed:
        raise invalid_field(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def copy_optional(payload: dict, record: dict, names: tuple[str, ...]) -> None:
    """Copy the optional pass-through fields that the payload contains."""
    for name in names:
        if name in payload:
            record[name] = payload[name]


def merge_custom_fields(payload: dict, previous: list[dict]) -> list[dict]:
    """Return the record's custom fields after applying the payload's.

    A field sent with an empty or null value is removed. Fields the payload
    does not name keep their values, as on an update in Zoho.
    """
    entries = payload.get("custom_fields")
    if entries is None:
        return previous
    if not isinstance(entries, list):
        raise invalid_field("custom_fields", "expected a list")

    merged = {field["api_name"]: field for field in previous}
    for entry in entries:
        api_name = _custom_field_name(entry)
        value = entry.get("value")
        if value is None or value == "":
            merged.pop(api_name, None)
        elif isinstance(value, str | int | bool):
            merged[api_name] = {"api_name": api_name, "value": value}
        else:
            raise invalid_field(
                "custom_fields", f"{api_name} needs a text or number value"
            )
    return list(merged.values())


def _custom_field_name(entry) -> str:
    if not isinstance(entry, dict):
        raise invalid_field("custom_fields", "each entry must be an object")

    api_name = entry.get("api_name")
    if not isinstance(api_name, str) or not re.fullmatch(r"cf_[a-z0-9_]+", api_name):
        raise invalid_field(
            "custom_fields",
            f"api_name {api_name!r} must look like cf_name (lower case, digits, _)",
        )
    return api_name


def custom_field_value(record: dict, api_name: str) -> str | None:
    """Return the custom field's value as text, or None when it is not set."""
    for field in record.get("custom_fields", []):
        if field["api_name"] == api_name:
            return str(field["value"])
    return None


def with_custom_field_keys(record: dict) -> dict:
    """Return the record with each custom field also as a top-level
    `cf_...` key, as Zoho's replies carry them."""
    view = dict(record)
    for field in record.get("custom_fields", []):
        view[field["api_name"]] = field["value"]
    return view
