"""Operations of the Books API on the record store: list, get, create,
update and upsert by a unique custom field."""

from __future__ import annotations

import copy
from datetime import datetime
from zoneinfo import ZoneInfo

from tshjobs.zoho.sandbox import fields
from tshjobs.zoho.sandbox.config import SandboxConfig
from tshjobs.zoho.sandbox.documents import CUSTOMERPAYMENTS, INVOICES, SALESORDERS
from tshjobs.zoho.sandbox.entities import CONTACTS, ITEMS, Kind
from tshjobs.zoho.sandbox.errors import (
    already_exists,
    invalid_field,
    invalid_query,
    not_found,
)
from tshjobs.zoho.sandbox.fields import UNIQUE_CUSTOM_FIELDS, Context
from tshjobs.zoho.sandbox.store import RecordStore

KINDS = {
    kind.name: kind
    for kind in (CONTACTS, ITEMS, SALESORDERS, INVOICES, CUSTOMERPAYMENTS)
}

# Zoho returns at most 200 records a page, and 200 when per_page is not given.
MAX_PER_PAGE = 200


def success(message: str = "success", **members) -> dict:
    return {"code": 0, "message": message, **members}


class Books:
    """The organisation's books: every call runs under the store's lock, so
    each write's checks and changes happen as one step."""

    def __init__(self, store: RecordStore, config: SandboxConfig):
        self.store = store
        self.config = config

    def context(self, query: dict[str, str]) -> Context:
        now = datetime.now(ZoneInfo(self.config.time_zone))
        return Context(config=self.config, store=self.store, now=now, query=query)

    def organization(self) -> dict:
        config = self.config
        return {
            "organization_id": config.organization_id,
            "name": config.organization_name,
            "is_default_org": True,
            "is_org_active": True,
            "currency_code": config.currency_code,
            "price_precision": config.price_precision,
            "time_zone": config.time_zone,
            "date_format": "yyyy-MM-dd",
            "language_code": "en",
        }

    def list(self, kind: Kind, query: dict[str, str]) -> dict:
        page = _positive_int(query, "page", 1)
        per_page = _positive_int(query, "per_page", MAX_PER_PAGE)
        if per_page > MAX_PER_PAGE:
            raise invalid_query("per_page", f"the maximum is {MAX_PER_PAGE}")

        with self.store.lock:
            matches = [
                record
                for record in self.store.scan(kind.name)
                if _matches(kind, record, query)
            ]
            start = (page - 1) * per_page
            rows = copy.deepcopy(matches[start : start + per_page])
        return success(
            **{
                kind.name: [fields.with_custom_field_keys(row) for row in rows],
                "page_context": {
                    "page": page,
                    "per_page": per_page,
                    "has_more_page": len(matches) > start + per_page,
                    "sort_column": "created_time",
                    "sort_order": "A",
                },
            }
        )

    def get(self, kind: Kind, record_id: str) -> dict:
        record = self.store.get(kind.name, record_id)
        if record is None:
            raise not_found(kind.noun)
        return success(**{kind.key: fields.with_custom_field_keys(record)})

    def create(self, kind: Kind, payload: dict, query: dict[str, str]) -> dict:
        record = self._write(kind, payload, None, query)
        return success(kind.created_message, **{kind.key: record})

    def update(
        self, kind: Kind, record_id: str, payload: dict, query: dict[str, str]
    ) -> dict:
        with self.store.lock:
            previous = self.store.get(kind.name, record_id)
            if previous is None:
                raise not_found(kind.noun)
            record = self._write(kind, payload, previous, query)
        return success(kind.updated_message, **{kind.key: record})

    def upsert(
        self,
        kind: Kind,
        key: str | None,
        value: str | None,
        create_when_absent: bool,
        payload: dict,
        query: dict[str, str],
    ) -> tuple[int, dict]:
        """Update the record whose unique custom field `key` has `value`, or
        create one when there is none and create_when_absent is true.
        Return (HTTP status, body)."""
        if key not in UNIQUE_CUSTOM_FIELDS:
            raise invalid_field(
                "X-Unique-Identifier-Key",
                f"{key!r} is not a unique custom field; use one of "
                f"{', '.join(UNIQUE_CUSTOM_FIELDS)}",
            )
        if not value:
            raise invalid_field("X-Unique-Identifier-Value", "a value is required")
        body_value = _custom_field_in_payload(payload, key)
        if body_value is not None and body_value != value:
            raise invalid_field(
                "custom_fields",
                f"{key} is {body_value!r} in the body but {value!r} in the header",
            )

        with self.store.lock:
            previous = self._find_by_custom_field(kind, key, value)
            if previous is not None:
                record = self._write(kind, payload, previous, query)
                return 200, success(kind.updated_message, **{kind.key: record})
            if not create_when_absent:
                raise not_found(kind.noun)

            payload = dict(payload)
            payload["custom_fields"] = [
                *_custom_fields(payload),
                {"api_name": key, "value": value},
            ]
            record = self._write(kind, payload, None, query)
            return 201, success(kind.created_message, **{kind.key: record})

    def _find_by_custom_field(self, kind: Kind, key: str, value: str) -> dict | None:
        for record in self.store.scan(kind.name):
            if fields.custom_field_value(record, key) == value:
                return copy.deepcopy(record)
        return None

    def _write(
        self, kind: Kind, payload: dict, previous: dict | None, query: dict[str, str]
    ) -> dict:
        with self.store.lock:
            context = self.context(query)
            record = kind.build(payload, previous, context)

            if previous is None:
                # The id first, as in Zoho's replies.
                record = {kind.id_field: self.store.new_id(), **record}
                record["created_time"] = context.timestamp()
            record["last_modified_time"] = context.timestamp()
            self._check_unique(kind, record)

            changes = [(kind.name, record[kind.id_field], record)]
            if kind.side_effects is not None:
                changes += kind.side_effects(record, previous, context)
            self.store.put_many(changes)
            return fields.with_custom_field_keys(record)

    def _check_unique(self, kind: Kind, record: dict) -> None:
        record_id = record[kind.id_field]
        others = [
            other
            for other in self.store.scan(kind.name)
            if other[kind.id_field] != record_id
        ]

        for rule in kind.unique:
            value = rule.key(record)
            if value is not None and any(rule.key(other) == value for other in others):
                raise rule.error(record)

        for api_name in UNIQUE_CUSTOM_FIELDS:
            value = fields.custom_field_value(record, api_name)
            if value is None:
                continue
            if any(
                fields.custom_field_value(other, api_name) == value for other in others
            ):
                raise already_exists(
                    f'The value "{value}" of the unique custom field {api_name} '
                    f"is already used by another {kind.noun.lower()}."
                )


def _custom_fields(payload: dict) -> list:
    given = payload.get("custom_fields") or []
    return given if isinstance(given, list) else []


def _custom_field_in_payload(payload: dict, api_name: str) -> str | None:
    for entry in _custom_fields(payload):
        if isinstance(entry, dict) and entry.get("api_name") == api_name:
            value = entry.get("value")
            return None if value in (None, "") else str(value)
    return None


def _matches(kind: Kind, record: dict, query: dict[str, str]) -> bool:
    """Return whether the record passes every filter in the query; other
    parameters, such as organization_id and page, are not filters."""
    for name, value in query.items():
        if name in kind.filters:
            matched = kind.filters[name](record, value)
        elif name.startswith("cf_"):
            matched = fields.custom_field_value(record, name) == value
        else:
            continue
        if not matched:
            return False
    return True


def _positive_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise invalid_query(name, f"expected a whole number from 1, not {raw!r}")
    return int(raw)
