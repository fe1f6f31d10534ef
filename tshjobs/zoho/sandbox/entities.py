"""Entity types of the Books API and the master data: contacts and items.

Each `Kind` defines how to build a record from a request body (on create, or on
update over the previous record), which values must be unique, and which
list filters it takes. Sales orders, invoices and payments are in
documents.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tshjobs.zoho.sandbox import fields
from tshjobs.zoho.sandbox.amounts import parse_amount
from tshjobs.zoho.sandbox.errors import (
    CONTACT_NAME_EXISTS,
    ApiError,
    already_exists,
    invalid_field,
)
from tshjobs.zoho.sandbox.fields import Context, name_key

Builder = Callable[[dict, "dict | None", Context], dict]
Filter = Callable[[dict, str], bool]
# Extra records a write changes besides its own: (entity, id, record).
SideEffects = Callable[[dict, "dict | None", Context], list[tuple[str, str, dict]]]


@dataclass(frozen=True)
class UniqueRule:
    """A value no two records of one kind may share."""

    key: Callable[[dict], str | None]
    error: Callable[[dict], ApiError]


@dataclass(frozen=True)
class Kind:
    """One entity type: URL segment, JSON keys, messages and rules."""

    name: str  # URL segment and store entity, e.g. "contacts"
    key: str  # JSON key of one record, e.g. "contact"
    id_field: str  # e.g. "contact_id"
    noun: str  # e.g. "Contact", in "Contact does not exist."
    created_message: str
    updated_message: str
    build: Builder
    unique: tuple[UniqueRule, ...] = ()
    filters: dict[str, Filter] = field(default_factory=dict)
    side_effects: SideEffects | None = None


def _contains(value: str | None, fragment: str) -> bool:
    return value is not None and name_key(fragment) in name_key(value)


def _equals(value: str | None, expected: str) -> bool:
    return value is not None and name_key(value) == name_key(expected)


# Contacts ------------------------------------------------------------------

CONTACT_OPTIONAL_FIELDS = (
    "company_name",
    "website",
    "phone",
    "mobile",
    "notes",
    "language_code",
    "payment_terms",
    "payment_terms_label",
    "billing_address",
    "shipping_address",
)


def build_contact(payload: dict, previous: dict | None, context: Context) -> dict:
    record = dict(previous or {"contact_type": "customer", "status": "active"})

    if previous is None or "contact_name" in payload:
        record["contact_name"] = fields.required_text(
            payload, "contact_name", max_length=200
        )
    if "company_name" in payload:
        fields.text(payload, "company_name", max_length=200)
    record["contact_type"] = fields.choice(
        payload, "contact_type", ("customer", "vendor"), record["contact_type"]
    )
    fields.copy_optional(payload, record, CONTACT_OPTIONAL_FIELDS)

    if "contact_persons" in payload:
        record["contact_persons"] = _contact_persons(
            payload["contact_persons"], context
        )
    record.setdefault("contact_persons", [])
    primary = [p for p in record["contact_persons"] if p["is_primary_contact"]]
    record["email"] = primary[0]["email"] if primary else ""

    record["custom_fields"] = fields.merge_custom_fields(
        payload, record.get("custom_fields", [])
    )
    return record


def _contact_persons(persons, context: Context) -> list[dict]:
    if not isinstance(persons, list):
        raise invalid_field("contact_persons", "expected a list")

    built = []
    for person in persons:
        if not isinstance(person, dict):
            raise invalid_field("contact_persons", "each entry must be an object")
        email = fields.text(person, "email", max_length=100) or ""
        if email and "@" not in email:
            raise invalid_field("email", f"{email!r} is not an email address")
        built.append(
            {
                "contact_person_id": context.store.new_id(),
                "first_name": fields.text(person, "first_name", max_length=100) or "",
                "last_name": fields.text(person, "last_name", max_length=100) or "",
                "email": email,
                "phone": fields.text(person, "phone", max_length=50) or "",
                "mobile": fields.text(person, "mobile", max_length=50) or "",
                "is_primary_contact": person.get("is_primary_contact") is True,
            }
        )

    # Zoho makes the first person primary when none is marked.
    if built and not any(person["is_primary_contact"] for person in built):
        built[0]["is_primary_contact"] = True
    return built


def _contact_has_email(record: dict, email: str) -> bool:
    emails = [record.get("email", "")]
    emails += [person["email"] for person in record.get("contact_persons", [])]
    return email.casefold() in (known.casefold() for known in emails if known)


def _contact_matches_text(record: dict, text: str) -> bool:
    haystack = (
        record.get("contact_name"),
        record.get("company_name"),
        record.get("email"),
    )
    return any(_contains(value, text) for value in haystack)


CONTACTS = Kind(
    name="contacts",
    key="contact",
    id_field="contact_id",
    noun="Contact",
    created_message="The contact has been added.",
    updated_message="Contact has been updated successfully.",
    build=build_contact,
    unique=(
        UniqueRule(
            key=lambda record: name_key(record["contact_name"]),
            error=lambda record: ApiError(
                400,
                CONTACT_NAME_EXISTS,
                f'The contact "{record["contact_name"]}" already exists.',
            ),
        ),
    ),
    filters={
        "contact_name": lambda r, v: _equals(r.get("contact_name"), v),
        "contact_name_contains": lambda r, v: _contains(r.get("contact_name"), v),
        "contact_name_startswith": lambda r, v: name_key(r["contact_name"]).startswith(
            name_key(v)
        ),
        "company_name": lambda r, v: _equals(r.get("company_name"), v),
        "email": _contact_has_email,
        "search_text": _contact_matches_text,
        "contact_type": lambda r, v: r.get("contact_type") == v,
        "status": lambda r, v: v.lower() == "all" or r.get("status") == v.lower(),
    },
)


# Items ---------------------------------------------------------------------

ITEM_OPTIONAL_FIELDS = ("unit", "description", "item_type", "purchase_description")


def build_item(payload: dict, previous: dict | None, context: Context) -> dict:
    record = dict(previous or {"status": "active", "product_type": "goods", "sku": ""})
    precision = context.config.price_precision

    if previous is None or "name" in payload:
        record["name"] = fields.required_text(payload, "name", max_length=100)
    if previous is None or "rate" in payload:
        if payload.get("rate") is None:
            raise invalid_field("rate", "a value is required")
        record["rate"] = parse_amount(payload["rate"], "rate", precision)
    if "sku" in payload:
        record["sku"] = fields.text(payload, "sku", max_length=100) or ""
    record["product_type"] = fields.choice(
        payload,
        "product_type",
        ("goods", "service", "digital_service"),
        record["product_type"],
    )
    fields.copy_optional(payload, record, ITEM_OPTIONAL_FIELDS)

    record["custom_fields"] = fields.merge_custom_fields(
        payload, record.get("custom_fields", [])
    )
    return record


ITEMS = Kind(
    name="items",
    key="item",
    id_field="item_id",
    noun="Item",
    created_message="The item has been added.",
    updated_message="The item details have been updated.",
    build=build_item,
    unique=(
        UniqueRule(
            key=lambda record: record.get("sku") or None,
            error=lambda record: already_exists(
                f'An item with the SKU "{record["sku"]}" already exists.'
            ),
        ),
    ),
    filters={
        "name": lambda r, v: _equals(r.get("name"), v),
        "name_contains": lambda r, v: _contains(r.get("name"), v),
        "sku": lambda r, v: r.get("sku") == v,
        "search_text": lambda r, v: (
            _contains(r.get("name"), v) or _contains(r.get("sku"), v)
        ),
        "status": lambda r, v: v.lower() == "all" or r.get("status") == v.lower(),
    },
)
