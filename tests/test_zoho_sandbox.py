"""The Zoho Books sandbox over real HTTP: tokens, errors, entities, amounts.

Limits, faults and state files are in test_zoho_sandbox_limits.py.
"""

from __future__ import annotations

import json
import time
import unicodedata
from decimal import Decimal

import pytest
import requests

from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer
from tshjobs.zoho.sandbox.amounts import dumps

DEFAULTS = SandboxConfig()
# Seconds any one HTTP call of a test may take before the test fails.
HTTP_TIMEOUT = 10


def token_form(**overrides) -> dict:
    form = {
        "grant_type": "refresh_token",
        "client_id": DEFAULTS.client_id,
        "client_secret": DEFAULTS.client_secret,
        "refresh_token": DEFAULTS.refresh_token,
    }
    return {**form, **overrides}


def request_token(sandbox: SandboxServer, **overrides) -> requests.Response:
    return requests.post(
        f"{sandbox.url}/oauth/v2/token",
        data=token_form(**overrides),
        timeout=HTTP_TIMEOUT,
    )


def new_token(sandbox: SandboxServer) -> str:
    response = request_token(sandbox)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def parse(response: requests.Response):
    """Return the JSON body with every fractional number as a Decimal."""
    return json.loads(response.text, parse_float=Decimal)


class BooksClient:
    """Calls /books/v3 with an access token and the organization_id."""

    def __init__(self, sandbox: SandboxServer, token: str | None = None):
        self.base = f"{sandbox.url}/books/v3"
        self.token = token or new_token(sandbox)
        self.organization_id = sandbox.config.organization_id

    def call(self, method, path, body=None, *, params=None, headers=None, data=None):
        params = {"organization_id": self.organization_id, **(params or {})}
        headers = {"Authorization": f"Zoho-oauthtoken {self.token}", **(headers or {})}
        if body is not None:
            data = dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return requests.request(
            method,
            self.base + path,
            params=params,
            headers=headers,
            data=data,
            timeout=HTTP_TIMEOUT,
        )

    def create(self, entity, body, **kwargs) -> dict:
        response = self.call("POST", f"/{entity}", body, **kwargs)
        assert response.status_code == 201, response.text
        return parse(response)

    def contact(self, name="Acme Trading", erp_id=None, **extra) -> dict:
        body = {"contact_name": name, **extra}
        if erp_id:
            body["custom_fields"] = [{"api_name": "cf_erp_id", "value": erp_id}]
        return self.create("contacts", body)["contact"]

    def item(self, name="Widget", rate=Decimal("10.00"), sku=None) -> dict:
        body = {"name": name, "rate": rate, "sku": sku or name.upper()}
        return self.create("items", body)["item"]

    def invoice(self, customer_id, item_id, rates, number=None) -> dict:
        body = {
            "customer_id": customer_id,
            "line_items": [{"item_id": item_id, "rate": rate} for rate in rates],
        }
        params = {}
        if number:
            body["invoice_number"] = number
            params["ignore_auto_number_generation"] = "true"
        return self.create("invoices", body, params=params)["invoice"]


@pytest.fixture
def sandbox():
    with SandboxServer(SandboxConfig()) as running:
        yield running


@pytest.fixture
def books(sandbox):
    return BooksClient(sandbox)


# Accounts server -------------------------------------------------------------


def test_token_refresh_returns_bearer_token(sandbox):
    response = request_token(sandbox)

    body = response.json()
    assert response.status_code == 200
    assert body["access_token"].startswith("1000.")
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["api_domain"] == sandbox.url
    assert "refresh_token" not in body


def test_token_accepts_query_parameters(sandbox):
    response = requests.post(
        f"{sandbox.url}/oauth/v2/token", params=token_form(), timeout=HTTP_TIMEOUT
    )

    assert "access_token" in response.json()


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"client_id": "someone-else"}, "invalid_client"),
        ({"client_secret": "wrong"}, "invalid_client_secret"),
        ({"refresh_token": "1000.unknown"}, "invalid_code"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
    ],
)
def test_token_errors(sandbox, overrides, error):
    response = request_token(sandbox, **overrides)

    assert response.status_code == 200
    assert response.json() == {"error": error}


def test_token_refused_after_refresh_token_revoked(sandbox):
    token = new_token(sandbox)

    sandbox.revoke_refresh_token()

    assert request_token(sandbox).json() == {"error": "invalid_code"}
    assert BooksClient(sandbox, token).call("GET", "/contacts").status_code == 200


def test_token_api_domain_setting():
    config = SandboxConfig(api_domain="https://www.zohoapis.eu")
    with SandboxServer(config) as sandbox:
        body = request_token(sandbox).json()

    assert body["api_domain"] == "https://www.zohoapis.eu"


def test_token_expires_after_ttl():
    with SandboxServer(SandboxConfig(token_ttl_seconds=1.0)) as sandbox:
        books = BooksClient(sandbox)
        fresh = books.call("GET", "/contacts")
        time.sleep(1.2)
        expired = books.call("GET", "/contacts")

    assert fresh.status_code == 200
    assert expired.status_code == 401
    assert expired.json()["code"] == 57


def test_token_request_limit_and_recovery():
    config = SandboxConfig(token_requests_limit=3, token_window_seconds=1.5)
    with SandboxServer(config) as sandbox:
        accepted = [request_token(sandbox) for _ in range(3)]
        denied = request_token(sandbox)
        time.sleep(1.6)
        after_window = request_token(sandbox)
        stats = sandbox.stats()

    assert all("access_token" in response.json() for response in accepted)
    assert denied.status_code == 400
    assert denied.json()["error"] == "Access Denied"
    assert denied.json()["error_description"].startswith(
        "You have made too many requests continuously"
    )
    assert "access_token" in after_window.json()
    assert stats["token_requests"] == 5
    assert stats["token_requests_denied"] == 1
    assert stats["tokens_issued"] == 4


def test_eleventh_token_revokes_oldest():
    with SandboxServer(SandboxConfig(token_requests_limit=20)) as sandbox:
        tokens = [new_token(sandbox) for _ in range(11)]
        statuses = [
            BooksClient(sandbox, token).call("GET", "/contacts").status_code
            for token in tokens
        ]
        live = sandbox.stats()["live_tokens"]

    assert statuses[0] == 401
    assert statuses[1:] == [200] * 10
    assert live == 10


def test_expire_tokens_gives_401_code_57(sandbox, books):
    sandbox.expire_tokens()

    response = books.call("GET", "/contacts")

    assert response.status_code == 401
    assert response.json()["code"] == 57


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer {token}", "Zoho-oauthtoken 1000.not-issued", "Zoho-oauthtoken"],
)
def test_api_rejects_bad_authorization(sandbox, authorization):
    token = new_token(sandbox)
    headers = {}
    if authorization:
        headers["Authorization"] = authorization.format(token=token)

    response = requests.get(
        f"{sandbox.url}/books/v3/contacts",
        params={"organization_id": sandbox.config.organization_id},
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )

    assert response.status_code == 401
    assert response.json()["code"] == 57


# Organisation and errors -----------------------------------------------------


def test_missing_organization_id(sandbox, books):
    response = requests.get(
        f"{books.base}/contacts",
        headers={"Authorization": f"Zoho-oauthtoken {books.token}"},
        timeout=HTTP_TIMEOUT,
    )

    assert response.status_code == 400
    assert response.json()["code"] == 2
    assert "organization_id" in response.json()["message"]


def test_wrong_organization_id(books):
    response = books.call("GET", "/contacts", params={"organization_id": "999"})

    assert response.status_code == 400
    assert response.json()["code"] == 6041


def test_organization_details(sandbox, books):
    one = parse(books.call("GET", f"/organizations/{sandbox.config.organization_id}"))
    listed = parse(books.call("GET", "/organizations", params={"organization_id": ""}))

    organization = one["organization"]
    assert organization["organization_id"] == "60012345"
    assert organization["price_precision"] == 2
    assert organization["time_zone"] == "Asia/Baghdad"
    assert organization["currency_code"] == "IQD"
    assert listed["organizations"] == [organization]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/contacts/460000000999999", 404, 1002),
        ("GET", "/items/1", 404, 1002),
        ("GET", "/salesorders/1", 404, 1002),
        ("GET", "/invoices/1", 404, 1002),
        ("GET", "/customerpayments/1", 404, 1002),
        ("PUT", "/contacts/1", 404, 1002),
        ("GET", "/journals", 404, 5),
        ("DELETE", "/contacts/1", 405, 5),
    ],
)
def test_error_replies(books, method, path, status, code):
    response = books.call(method, path, {} if method == "PUT" else None)

    assert response.status_code == status
    assert response.json()["code"] == code


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"contact_name": "A"'])
def test_malformed_json_code_1038(books, body):
    response = books.call(
        "POST", "/contacts", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json() == {"code": 1038, "message": "JSON is not well formed"}


def test_form_encoded_json_string(books):
    response = books.call(
        "POST",
        "/contacts",
        data={"JSONString": json.dumps({"contact_name": "Form Co"})},
    )

    assert response.status_code == 201
    assert response.json()["contact"]["contact_name"] == "Form Co"


# Contacts --------------------------------------------------------------------


def test_contact_create_get_update(books):
    created = books.contact(
        "Baghdad Steel",
        erp_id="C-1001",
        contact_persons=[{"email": "ali@example.com", "is_primary_contact": True}],
    )

    fetched = parse(books.call("GET", f"/contacts/{created['contact_id']}"))["contact"]
    updated = parse(
        books.call("PUT", f"/contacts/{created['contact_id']}", {"phone": "+964 1"})
    )

    assert fetched == created
    assert created["contact_type"] == "customer"
    assert created["email"] == "ali@example.com"
    assert created["cf_erp_id"] == "C-1001"
    assert updated["message"] == "Contact has been updated successfully."
    assert updated["contact"]["phone"] == "+964 1"
    assert updated["contact"]["contact_name"] == "Baghdad Steel"
    assert updated["contact"]["custom_fields"] == created["custom_fields"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"contact_name": "basra dates"}, ["Basra Dates"]),
        ({"contact_name_contains": "DATE"}, ["Basra Dates", "Dates of Mosul"]),
        ({"email": "SALES@mosul.example"}, ["Dates of Mosul"]),
        ({"search_text": "steel"}, ["Baghdad Steel"]),
        ({"cf_erp_id": "C-2"}, ["Dates of Mosul"]),
        ({"cf_erp_id": "C-404"}, []),
    ],
)
def test_contact_list_filters(books, params, expected):
    books.contact("Basra Dates", erp_id="C-1")
    books.contact(
        "Dates of Mosul",
        erp_id="C-2",
        contact_persons=[{"email": "sales@mosul.example"}],
    )
    books.contact("Baghdad Steel", erp_id="C-3")

    body = parse(books.call("GET", "/contacts", params=params))

    assert [row["contact_name"] for row in body["contacts"]] == expected


def test_contact_list_pagination(books):
    for number in range(5):
        books.contact(f"Customer {number}")

    pages = [
        parse(books.call("GET", "/contacts", params={"page": page, "per_page": 2}))
        for page in (1, 2, 3)
    ]
    default = parse(books.call("GET", "/contacts"))

    names = [[row["contact_name"] for row in page["contacts"]] for page in pages]
    assert names == [
        ["Customer 0", "Customer 1"],
        ["Customer 2", "Customer 3"],
        ["Customer 4"],
    ]
    assert [page["page_context"]["has_more_page"] for page in pages] == [
        True,
        True,
        False,
    ]
    assert pages[1]["page_context"]["page"] == 2
    assert pages[1]["page_context"]["per_page"] == 2
    assert default["page_context"]["per_page"] == 200
    assert len(default["contacts"]) == 5


def test_contact_list_rejects_per_page_over_200(books):
    response = books.call("GET", "/contacts", params={"per_page": 201})

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("x" * 200, True), ("x" * 201, False), ("", False), ("   ", False)],
)
def test_contact_name_length(books, name, accepted):
    response = books.call("POST", "/contacts", {"contact_name": name})

    assert response.status_code == (201 if accepted else 400)


@pytest.mark.parametrize(
    "second",
    ["Najaf Motors", "NAJAF MOTORS", " najaf motors "],
)
def test_duplicate_contact_name_code_3062(books, second):
    books.contact("Najaf Motors")

    response = books.call("POST", "/contacts", {"contact_name": second})

    assert response.status_code == 400
    assert response.json()["code"] == 3062


def test_duplicate_contact_name_in_other_unicode_form(books):
    books.contact(unicodedata.normalize("NFC", "Café Zoë"))

    response = books.call(
        "POST", "/contacts", {"contact_name": unicodedata.normalize("NFD", "Café Zoë")}
    )

    assert response.json()["code"] == 3062


def test_contact_names_differing_in_diacritics_are_distinct(books):
    books.contact("Cafe Zoe")

    response = books.call("POST", "/contacts", {"contact_name": "Café Zoë"})

    assert response.status_code == 201


def test_contact_rename_onto_existing_name_rejected(books):
    books.contact("Kirkuk Oil")
    other = books.contact("Erbil Oil")

    response = books.call(
        "PUT", f"/contacts/{other['contact_id']}", {"contact_name": "kirkuk oil"}
    )

    assert response.json()["code"] == 3062


@pytest.mark.parametrize(
    "name",
    [
        "شركة النور للتجارة العامة",
        "مُحَمَّد عَلِي",
        "Café Zoë Müller",
        "Smith & Sons",
        "O'Brien's Hardware",
        "Acme, Inc.",
        "دار الكتب & Co., O'Neil — Ñandú",
    ],
)
def test_names_round_trip(books, name):
    created = books.contact(name)

    fetched = parse(books.call("GET", f"/contacts/{created['contact_id']}"))
    found = parse(books.call("GET", "/contacts", params={"contact_name": name}))

    assert created["contact_name"] == name
    assert fetched["contact"]["contact_name"] == name
    assert [row["contact_id"] for row in found["contacts"]] == [created["contact_id"]]


# Unique custom field and upsert ----------------------------------------------


@pytest.mark.parametrize(
    ("entity", "body"),
    [
        ("contacts", lambda n: {"contact_name": f"Contact {n}"}),
        ("items", lambda n: {"name": f"Item {n}", "rate": 1, "sku": f"SKU-{n}"}),
    ],
)
def test_duplicate_cf_erp_id_rejected(books, entity, body):
    custom = [{"api_name": "cf_erp_id", "value": "ERP-7"}]
    books.create(entity, {**body(1), "custom_fields": custom})

    response = books.call("POST", f"/{entity}", {**body(2), "custom_fields": custom})

    assert response.status_code == 400
    assert response.json()["code"] == 1001
    assert "cf_erp_id" in response.json()["message"]


def test_cf_erp_id_may_repeat_across_entity_types(books):
    books.contact("Shared Id", erp_id="X-1")

    response = books.call(
        "POST",
        "/items",
        {
            "name": "Shared",
            "rate": 1,
            "custom_fields": [{"api_name": "cf_erp_id", "value": "X-1"}],
        },
    )

    assert response.status_code == 201


UPSERT_HEADERS = {
    "X-Unique-Identifier-Key": "cf_erp_id",
    "X-Unique-Identifier-Value": "C-5005",
    "X-Upsert": "true",
}


def test_upsert_creates_then_updates(sandbox, books):
    created = books.call(
        "PUT", "/contacts", {"contact_name": "Upsert Co"}, headers=UPSERT_HEADERS
    )
    updated = books.call(
        "PUT",
        "/contacts",
        {"contact_name": "Upsert Co", "phone": "07700"},
        headers=UPSERT_HEADERS,
    )

    assert created.status_code == 201
    assert created.json()["contact"]["cf_erp_id"] == "C-5005"
    assert updated.status_code == 200
    assert (
        updated.json()["contact"]["contact_id"]
        == created.json()["contact"]["contact_id"]
    )
    assert updated.json()["contact"]["phone"] == "07700"
    assert sandbox.count("contacts") == 1


def test_upsert_of_invoice(books):
    customer = books.contact("Invoice Upsert")
    item = books.item()
    body = {
        "customer_id": customer["contact_id"],
        "line_items": [{"item_id": item["item_id"]}],
    }
    headers = {**UPSERT_HEADERS, "X-Unique-Identifier-Value": "INV-ERP-1"}

    first = books.call("PUT", "/invoices", body, headers=headers)
    second = books.call("PUT", "/invoices", {**body, "notes": "again"}, headers=headers)

    assert first.status_code == 201
    assert second.status_code == 200
    assert (
        second.json()["invoice"]["invoice_id"] == first.json()["invoice"]["invoice_id"]
    )
    assert second.json()["invoice"]["notes"] == "again"


def test_upsert_without_x_upsert_404(books):
    headers = {k: v for k, v in UPSERT_HEADERS.items() if k != "X-Upsert"}

    response = books.call(
        "PUT", "/contacts", {"contact_name": "Nobody"}, headers=headers
    )

    assert response.status_code == 404
    assert response.json()["code"] == 1002


def test_upsert_rejects_key_that_is_not_unique(books):
    headers = {**UPSERT_HEADERS, "X-Unique-Identifier-Key": "cf_region"}

    response = books.call(
        "PUT", "/contacts", {"contact_name": "Region"}, headers=headers
    )

    assert response.status_code == 400


def test_upsert_rejects_body_value_unlike_header(books):
    body = {
        "contact_name": "Mismatch",
        "custom_fields": [{"api_name": "cf_erp_id", "value": "C-9999"}],
    }

    response = books.call("PUT", "/contacts", body, headers=UPSERT_HEADERS)

    assert response.status_code == 400


# Items -----------------------------------------------------------------------


def test_item_create_update_and_filters(books):
    item = books.item("Cement 50kg", Decimal("7.25"), sku="CEM-50")
    books.item("Rebar 12mm", Decimal(3), sku="REB-12")

    updated = parse(books.call("PUT", f"/items/{item['item_id']}", {"rate": "7.50"}))
    by_sku = parse(books.call("GET", "/items", params={"sku": "REB-12"}))
    by_name = parse(books.call("GET", "/items", params={"name": "cement 50KG"}))

    assert item["rate"] == Decimal("7.25")
    assert item["product_type"] == "goods"
    assert updated["item"]["rate"] == Decimal("7.50")
    assert [row["name"] for row in by_sku["items"]] == ["Rebar 12mm"]
    assert [row["sku"] for row in by_name["items"]] == ["CEM-50"]


def test_item_duplicate_sku_rejected(books):
    books.item("First", sku="DUP")

    response = books.call("POST", "/items", {"name": "Second", "rate": 1, "sku": "DUP"})

    assert response.status_code == 400
    assert response.json()["code"] == 1001


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 101, "rate": 1}, "name"),
        ({"rate": 1}, "name"),
        ({"name": "No rate"}, "rate"),
        ({"name": "Bad rate", "rate": "abc"}, "rate"),
        ({"name": "Kind", "rate": 1, "product_type": "gadget"}, "product_type"),
    ],
)
def test_item_validation(books, body, field):
    response = books.call("POST", "/items", body)

    assert response.status_code == 400
    assert response.json()["code"] == 4
    assert field in response.json()["message"]


# Sales orders and invoices ---------------------------------------------------


def test_salesorder_create_update_and_filter(books):
    customer = books.contact("Order Co")
    item = books.item(rate=Decimal("2.50"))
    body = {
        "customer_id": customer["contact_id"],
        "date": "2025-03-01",
        "reference_number": "ERP-SO-1",
        "line_items": [{"item_id": item["item_id"], "quantity": 4}],
    }

    order = books.create("salesorders", body)["salesorder"]
    updated = parse(
        books.call(
            "PUT",
            f"/salesorders/{order['salesorder_id']}",
            {"reference_number": "ERP-SO-2"},
        )
    )
    found = parse(
        books.call("GET", "/salesorders", params={"reference_number": "ERP-SO-2"})
    )

    assert order["salesorder_number"] == "SO-00001"
    assert order["customer_name"] == "Order Co"
    assert order["total"] == Decimal("10.00")
    assert order["line_items"][0]["rate"] == Decimal("2.50")
    assert updated["salesorder"]["total"] == Decimal("10.00")
    assert [row["salesorder_id"] for row in found["salesorders"]] == [
        order["salesorder_id"]
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": "460000000999999"}, "customer_id"),
        ({"customer_id": None}, "customer_id"),
        ({"line_items": [{"item_id": "460000000999999"}]}, "item_id"),
        ({"line_items": []}, "line_items"),
        ({"date": "2025-02-30"}, "date"),
        ({"date": "01/03/2025"}, "date"),
    ],
)
def test_salesorder_validation(books, change, field):
    customer = books.contact()
    item = books.item()
    body = {
        "customer_id": customer["contact_id"],
        "line_items": [{"item_id": item["item_id"]}],
    }

    response = books.call("POST", "/salesorders", {**body, **change})

    assert response.status_code == 400
    assert response.json()["code"] == 4
    assert field in response.json()["message"]


def test_invoice_numbers(books):
    customer = books.contact()
    item = books.item()

    automatic = books.invoice(customer["contact_id"], item["item_id"], [1])
    own = books.invoice(
        customer["contact_id"], item["item_id"], [1], number="ERP-INV-77"
    )
    duplicate = books.call(
        "POST",
        "/invoices",
        {
            "customer_id": customer["contact_id"],
            "invoice_number": "ERP-INV-77",
            "line_items": [{"item_id": item["item_id"]}],
        },
        params={"ignore_auto_number_generation": "true"},
    )
    found = parse(
        books.call("GET", "/invoices", params={"invoice_number": "ERP-INV-77"})
    )

    assert automatic["invoice_number"] == "INV-000001"
    assert own["invoice_number"] == "ERP-INV-77"
    assert duplicate.status_code == 400
    assert duplicate.json()["code"] == 1001
    assert [row["invoice_id"] for row in found["invoices"]] == [own["invoice_id"]]


def test_invoice_number_without_ignore_flag_rejected(books):
    customer = books.contact()
    item = books.item()
    body = {
        "customer_id": customer["contact_id"],
        "invoice_number": "MINE-1",
        "line_items": [{"item_id": item["item_id"]}],
    }

    response = books.call("POST", "/invoices", body)

    assert response.status_code == 400
    assert "ignore_auto_number_generation" in response.json()["message"]


# Amounts ---------------------------------------------------------------------


def test_invoice_total_exact_decimal(books):
    customer = books.contact()
    item = books.item()

    # The client helper writes Decimal("0.1") as the JSON number 0.1.
    line = {"item_id": item["item_id"], "rate": Decimal("0.1")}
    body = {"customer_id": customer["contact_id"], "line_items": [line] * 3}

    response = books.call("POST", "/invoices", body)

    assert response.status_code == 201
    assert '"total":0.30' in response.text
    assert parse(response)["invoice"]["total"] == Decimal("0.30")
    assert parse(response)["invoice"]["balance"] == Decimal("0.30")


def test_payment_of_point_three_stored_and_echoed_exactly(sandbox, books):
    customer = books.contact()
    item = books.item()
    invoice = books.invoice(
        customer["contact_id"], item["item_id"], [Decimal("0.1")] * 3
    )

    body = {
        "customer_id": customer["contact_id"],
        "amount": Decimal("0.30"),
        "payment_mode": "cash",
        "reference_number": "PAY-1",
        "invoices": [
            {"invoice_id": invoice["invoice_id"], "amount_applied": Decimal("0.30")}
        ],
    }

    response = books.call("POST", "/customerpayments", body)
    fetched = books.call(
        "GET", f"/customerpayments/{parse(response)['payment']['payment_id']}"
    )

    assert response.status_code == 201
    assert '"amount":0.30' in response.text
    assert '"amount_applied":0.30' in fetched.text
    assert sandbox.records("customerpayments")[0]["amount"] == Decimal("0.30")
    assert parse(fetched)["payment"]["amount"] == Decimal("0.30")


@pytest.mark.parametrize("rate", ["0.305", "1.001", "0.0001"])
def test_amount_with_too_many_decimals_rejected(books, rate):
    response = books.call(
        "POST", "/items", data=f'{{"name": "Precise", "rate": {rate}}}'.encode()
    )

    assert response.status_code == 400
    assert response.json()["code"] == 4
    assert "decimal places" in response.json()["message"]


def test_amount_with_trailing_zeros_accepted(books):
    response = books.call("POST", "/items", data=b'{"name": "Zeros", "rate": 0.300}')

    assert response.status_code == 201
    assert parse(response)["item"]["rate"] == Decimal("0.30")


def test_price_precision_setting():
    with SandboxServer(SandboxConfig(price_precision=3)) as sandbox:
        books = BooksClient(sandbox)
        response = books.call("POST", "/items", data=b'{"name": "Fils", "rate": 0.125}')

    assert response.status_code == 201
    assert '"rate":0.125' in response.text


# Payments --------------------------------------------------------------------


def test_payments_update_invoice_balance_and_status(books):
    customer = books.contact()
    item = books.item()
    invoice = books.invoice(
        customer["contact_id"], item["item_id"], [Decimal("100.00")]
    )

    def pay(amount, reference):
        body = {
            "customer_id": customer["contact_id"],
            "amount": amount,
            "payment_mode": "banktransfer",
            "reference_number": reference,
            "invoices": [
                {"invoice_id": invoice["invoice_id"], "amount_applied": amount}
            ],
        }
        return books.create("customerpayments", body)["payment"]

    pay(Decimal("40.00"), "PAY-A")
    partial = parse(books.call("GET", f"/invoices/{invoice['invoice_id']}"))["invoice"]
    pay(Decimal("60.00"), "PAY-B")
    paid = parse(books.call("GET", f"/invoices/{invoice['invoice_id']}"))["invoice"]
    found = parse(
        books.call("GET", "/customerpayments", params={"reference_number": "PAY-B"})
    )

    assert partial["status"] == "partially_paid"
    assert partial["balance"] == Decimal("60.00")
    assert paid["status"] == "paid"
    assert paid["balance"] == Decimal("0.00")
    assert [row["reference_number"] for row in found["customerpayments"]] == ["PAY-B"]


def test_payment_update_moves_application(books):
    customer = books.contact()
    item = books.item()
    invoice = books.invoice(customer["contact_id"], item["item_id"], [Decimal("50.00")])
    body = {
        "customer_id": customer["contact_id"],
        "amount": Decimal("50.00"),
        "invoices": [
            {"invoice_id": invoice["invoice_id"], "amount_applied": Decimal("50.00")}
        ],
    }
    payment = books.create("customerpayments", body)["payment"]

    books.call("PUT", f"/customerpayments/{payment['payment_id']}", {"invoices": []})
    reopened = parse(books.call("GET", f"/invoices/{invoice['invoice_id']}"))["invoice"]

    assert reopened["balance"] == Decimal("50.00")
    assert reopened["status"] == "draft"


@pytest.mark.parametrize(
    ("amount", "applied", "field"),
    [
        ("20.00", "30.00", "invoices"),
        ("80.00", "60.00", "amount_applied"),
        ("0", "0", "amount"),
    ],
)
def test_payment_validation(sandbox, books, amount, applied, field):
    customer = books.contact()
    item = books.item()
    invoice = books.invoice(customer["contact_id"], item["item_id"], [Decimal("50.00")])
    body = {
        "customer_id": customer["contact_id"],
        "amount": amount,
        "invoices": [{"invoice_id": invoice["invoice_id"], "amount_applied": applied}],
    }

    response = books.call("POST", "/customerpayments", body)

    assert response.status_code == 400
    assert field in response.json()["message"]
    assert sandbox.records("invoices")[0]["balance"] == Decimal("50.00")


def test_payment_for_invoice_of_other_customer_rejected(books):
    first = books.contact("First")
    second = books.contact("Second")
    item = books.item()
    invoice = books.invoice(first["contact_id"], item["item_id"], [Decimal("5.00")])
    body = {
        "customer_id": second["contact_id"],
        "amount": "5.00",
        "invoices": [{"invoice_id": invoice["invoice_id"], "amount_applied": "5.00"}],
    }

    response = books.call("POST", "/customerpayments", body)

    assert response.status_code == 400
    assert "another customer" in response.json()["message"]
