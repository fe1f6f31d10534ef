"""The Zoho Books client: requests, the error envelope, one refresh on 401,
timeouts, paging, upsert and exact decimal amounts.

Replies that the sandbox cannot make come from StubZoho, a scripted server
of these tests; everything else runs against the sandbox over HTTP.
"""

from __future__ import annotations

import datetime
import json
import logging
import pickle
from decimal import Decimal

import pytest

from tests.services import free_port
from tests.zoho_support import client_for, zoho_settings
from tshjobs.errors import (
    ConfigError,
    PermanentError,
    TemporaryError,
    ZohoAuthError,
    ZohoConnectionError,
    ZohoDailyLimitReached,
    ZohoDuplicate,
    ZohoError,
    ZohoNotConfigured,
    ZohoNotFound,
    ZohoRateLimited,
    ZohoServerError,
    ZohoTimeout,
    ZohoValidationError,
    is_temporary,
)
from tshjobs.settings import load_settings
from tshjobs.zoho.client import ZohoClient
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.decimal_json import decode_json, encode_json, round_amount

pytest_plugins = ["tests.zoho_fixtures"]


@pytest.fixture
def stub_settings(tmp_path, stub):
    return zoho_settings(tmp_path / "data", stub.url, zoho_timeout=0.5)


@pytest.mark.parametrize(
    ("status", "body", "error_class", "code"),
    [
        (400, {"code": 1038, "message": "JSON is not well formed"},
         ZohoValidationError, 1038),
        (400, {"code": 3062, "message": "The contact name already exists."},
         ZohoDuplicate, 3062),
        (400, {"code": 1001, "message": "A record with cf_erp_id C-1 already "
               "exists."}, ZohoDuplicate, 1001),
        (404, {"code": 1002, "message": "Contact does not exist."},
         ZohoNotFound, 1002),
        (200, {"code": 1002, "message": "Invoice does not exist."},
         ZohoNotFound, 1002),
        (405, {"code": 9, "message": "Method not allowed"},
         ZohoValidationError, 9),
        (500, {"code": 1000, "message": "Internal error"}, ZohoServerError, 1000),
        (200, {"code": 1000, "message": "Internal error"}, ZohoServerError, 1000),
        (502, "<html>Bad gateway</html>", ZohoServerError, None),
        (429, {"code": 44, "message": "Too many requests"}, ZohoRateLimited, 44),
        (429, {"code": 45, "message": "Daily limit reached"},
         ZohoDailyLimitReached, 45),
    ],
)  # fmt: skip
def test_envelope_error_mapped(stub, stub_settings, status, body, error_class, code):
    stub.reply(status, body)

    with client_for(stub_settings) as client, pytest.raises(ZohoError) as caught:
        client.get("/contacts/42")

    error = caught.value
    assert type(error) is error_class
    assert error.code == code
    assert error.status == status
    assert "GET /contacts/42" in str(error)
    if isinstance(body, dict):
        assert body["message"] in str(error)
    assert "stub-token" not in str(error)


@pytest.mark.parametrize(
    ("error_class", "temporary"),
    [
        (ZohoValidationError, False),
        (ZohoDuplicate, False),
        (ZohoNotFound, False),
        (ZohoAuthError, False),
        (ZohoServerError, True),
        (ZohoTimeout, True),
        (ZohoConnectionError, True),
    ],
)
def test_error_classes_follow_retry_policy(error_class, temporary):
    error = error_class("failed", method="GET", path="/contacts")

    assert is_temporary(error) is temporary
    assert isinstance(error, TemporaryError if temporary else PermanentError)


def test_error_survives_pickling():
    retry_at = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    error = ZohoRateLimited(
        "rate limit reached", retry_at=retry_at, method="GET",
        path="/contacts", status=429, code=44, zoho_message="Too many",
    )  # fmt: skip

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is ZohoRateLimited
    assert copy.retry_at == retry_at
    assert copy.code == 44
    assert str(copy) == str(error)
    assert "retry after 2030-01-02 03:04:05 UTC" in str(copy)


def test_401_refreshes_once_and_retries(stub, stub_settings):
    stub.reply(401, {"code": 57, "message": "You are not authorized"})

    with client_for(stub_settings) as client:
        result = client.get("/contacts")

    calls = stub.api_requests()
    assert result["code"] == 0
    assert stub.token_requests == 2
    assert len(calls) == 2
    assert calls[0].headers["Authorization"] == "Zoho-oauthtoken stub-token-1"
    assert calls[1].headers["Authorization"] == "Zoho-oauthtoken stub-token-2"


def test_401_after_refresh_raises_auth_error(stub, stub_settings):
    stub.reply(401, {"code": 57, "message": "You are not authorized"})
    stub.reply(401, {"code": 57, "message": "You are not authorized"})

    with client_for(stub_settings) as client, pytest.raises(ZohoAuthError) as caught:
        client.get("/contacts")

    assert caught.value.code == 57
    assert stub.token_requests == 2
    assert len(stub.api_requests()) == 2


def test_request_carries_token_organization_and_json(stub, stub_settings):
    with client_for(stub_settings) as client:
        client.post("/contacts", {"contact_name": "Ali Café"}, {"send": "false"})

    call = stub.api_requests()[0]
    assert call.method == "POST"
    assert call.path == "/books/v3/contacts"
    assert call.query == {"send": "false", "organization_id": "60012345"}
    assert call.headers["Authorization"] == "Zoho-oauthtoken stub-token-1"
    assert call.headers["Content-Type"].startswith("application/json")
    assert json.loads(call.body) == {"contact_name": "Ali Café"}


def test_decimal_amount_sent_exactly(stub, stub_settings):
    amount = round_amount(Decimal("0.1") * 3)

    with client_for(stub_settings) as client:
        client.post("/customerpayments", {"amount": amount})

    assert b'"amount": 0.30' in stub.api_requests()[0].body


def test_response_amounts_parsed_as_decimal(stub, stub_settings):
    stub.reply(200, '{"code": 0, "message": "ok", "invoice": {"total": 0.30}}')

    with client_for(stub_settings) as client:
        invoice = client.get("/invoices/1")["invoice"]

    assert invoice["total"] == Decimal("0.30")
    assert str(invoice["total"]) == "0.30"


def test_float_in_body_rejected():
    with pytest.raises(TypeError):
        encode_json({"amount": 0.1 * 3})


def test_decimal_json_round_trip():
    body = {"amount": Decimal("0.30"), "lines": [{"rate": Decimal("1E+2")}]}

    text = encode_json(body)

    assert text == '{"amount": 0.30, "lines": [{"rate": 100}]}'
    assert decode_json(text) == {"amount": Decimal("0.30"), "lines": [{"rate": 100}]}


def test_timeout_raises_zoho_timeout(stub, stub_settings):
    stub.reply(delay=1.5)

    with client_for(stub_settings) as client, pytest.raises(ZohoTimeout) as caught:
        client.post("/contacts", {"contact_name": "Slow"})

    assert "POST /contacts" in str(caught.value)
    assert "may have been applied" in str(caught.value)


def test_connection_refused_raises_connection_error(tmp_path):
    settings = zoho_settings(tmp_path, f"http://127.0.0.1:{free_port()}")

    with client_for(settings) as client, pytest.raises(ZohoConnectionError):
        client.get("/contacts")


def test_list_all_follows_pages(stub, stub_settings):
    for page, has_more in ((1, True), (2, True), (3, False)):
        stub.reply(body={
            "code": 0, "message": "ok",
            "contacts": [{"contact_id": f"{page}-a"}, {"contact_id": f"{page}-b"}],
            "page_context": {"page": page, "per_page": 2, "has_more_page": has_more},
        })  # fmt: skip

    with client_for(stub_settings) as client:
        contacts = client.list_all("/contacts", "contacts", {"per_page": 2})

    assert len(contacts) == 6
    assert [call.query["page"] for call in stub.api_requests()] == ["1", "2", "3"]


def test_upsert_sends_unique_key_headers(stub, stub_settings):
    stub.reply(body={"code": 0, "message": "ok", "contact": {"contact_id": "9"}})

    with client_for(stub_settings) as client:
        contact = client.upsert(
            "/contacts", "contact", "cf_erp_id", "C-1001", {"contact_name": "A"}
        )

    call = stub.api_requests()[0]
    assert contact == {"contact_id": "9"}
    assert call.method == "PUT"
    assert call.path == "/books/v3/contacts"
    assert call.headers["X-Unique-Identifier-Key"] == "cf_erp_id"
    assert call.headers["X-Unique-Identifier-Value"] == "C-1001"
    assert call.headers["X-Upsert"] == "true"


def test_daily_limit_429_stops_later_calls(stub, stub_settings):
    stub.reply(429, {"code": 45, "message": "Daily limit reached"})

    with client_for(stub_settings) as client:
        with pytest.raises(ZohoDailyLimitReached):
            client.get("/contacts")
        with pytest.raises(ZohoDailyLimitReached):
            client.get("/contacts")

    assert len(stub.api_requests()) == 1


def test_call_logged_at_debug(stub, stub_settings, caplog):
    with (
        caplog.at_level(logging.DEBUG, logger="tshjobs.zoho.client"),
        client_for(stub_settings) as client,
    ):
        client.get("/contacts")

    assert "Zoho GET /contacts: HTTP 200 in" in caplog.text


def test_client_without_zoho_settings(tmp_path):
    settings = zoho_settings(tmp_path, "", zoho_client_id="")

    with pytest.raises(ZohoNotConfigured) as caught:
        ZohoClient(settings)

    assert "TSHJOBS_ZOHO_CLIENT_ID" in str(caught.value)


def test_payment_round_trip_exact(sandbox_settings, sandbox):
    with client_for(sandbox_settings) as client:
        contact = client.post("/contacts", {"contact_name": "Decimal Customer"})
        customer_id = contact["contact"]["contact_id"]
        invoice = client.post(
            "/invoices",
            {
                "customer_id": customer_id,
                "line_items": [{"name": "Bolt", "quantity": 3, "rate": Decimal("0.1")}],
            },
        )["invoice"]
        amount = client.round_amount(Decimal("0.1") * 3)
        sent = []
        client.session.hooks["response"].append(
            lambda response, *args, **kwargs: sent.append(response.request.body)
        )
        payment = client.post(
            "/customerpayments",
            {
                "customer_id": customer_id,
                "payment_mode": "cash",
                "amount": amount,
                "invoices": [{"invoice_id": invoice["invoice_id"],
                              "amount_applied": Decimal("0.30")}],
            },
        )["payment"]  # fmt: skip

    assert invoice["total"] == Decimal("0.30")
    assert isinstance(invoice["total"], Decimal)
    assert b'"amount": 0.30' in sent[0]
    assert payment["amount"] == Decimal("0.30")
    assert sandbox.records("customerpayments")[0]["amount"] == Decimal("0.30")


def test_upsert_twice_makes_one_contact(sandbox_settings, sandbox):
    body = {
        "contact_name": "Upsert Customer",
        "custom_fields": [{"api_name": "cf_erp_id", "value": "C-1001"}],
    }

    with client_for(sandbox_settings) as client:
        first = client.upsert("/contacts", "contact", "cf_erp_id", "C-1001", body)
        second = client.upsert("/contacts", "contact", "cf_erp_id", "C-1001", body)

    assert first["contact_id"] == second["contact_id"]
    assert sandbox.count("contacts") == 1


def test_list_all_contacts_from_sandbox(sandbox_settings, sandbox):
    with client_for(sandbox_settings) as client:
        for number in range(5):
            client.post("/contacts", {"contact_name": f"Customer {number}"})
        contacts = client.list_all("/contacts", "contacts", {"per_page": 2})

    assert sorted(c["contact_name"] for c in contacts) == [
        f"Customer {number}" for number in range(5)
    ]


def test_organization_fetched_once(sandbox_settings, sandbox):
    with client_for(sandbox_settings) as client:
        first = client.organization()
        second = client.organization()

    assert first is second
    assert first["price_precision"] == 2
    assert first["time_zone"] == "Asia/Baghdad"
    assert client.limiter.time_zone == "Asia/Baghdad"
    assert sandbox.stats()["requests"] == 1


def test_duplicate_contact_from_sandbox(sandbox_settings, sandbox):
    with client_for(sandbox_settings) as client:
        client.post("/contacts", {"contact_name": "Twice"})
        with pytest.raises(ZohoDuplicate) as caught:
            client.post("/contacts", {"contact_name": "Twice"})

    assert caught.value.code == 3062
    assert not is_temporary(caught.value)


def test_missing_record_from_sandbox(sandbox_settings, sandbox):
    with client_for(sandbox_settings) as client, pytest.raises(ZohoNotFound) as caught:
        client.get("/contacts/999999")

    assert caught.value.code == 1002
    assert "GET /contacts/999999" in str(caught.value)


def test_server_error_from_sandbox(sandbox_settings, sandbox):
    sandbox.inject("500")

    with (
        client_for(sandbox_settings) as client,
        pytest.raises(ZohoServerError) as caught,
    ):
        client.get("/contacts")

    assert caught.value.code == 1000
    assert is_temporary(caught.value)


def test_timeout_after_commit_from_sandbox(tmp_path, sandbox, store_url):
    settings = zoho_settings(tmp_path, sandbox.url, store_url, zoho_timeout=0.2)
    sandbox.inject("commit_then_timeout", path="/contacts", method="POST")

    with client_for(settings) as client, pytest.raises(ZohoTimeout) as caught:
        client.post("/contacts", {"contact_name": "Maybe"})

    assert is_temporary(caught.value)
    assert sandbox.count("contacts") == 1


def test_rate_limited_429_from_sandbox(sandbox_settings, sandbox):
    sandbox.inject("429")

    with (
        client_for(sandbox_settings) as client,
        pytest.raises(ZohoRateLimited) as caught,
    ):
        client.get("/contacts")

    assert caught.value.code == 44
    assert caught.value.retry_at is not None
    assert is_temporary(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TSHJOBS_ZOHO_DATA_CENTRE", "us", "allowed: com, eu, in"),
        ("TSHJOBS_ZOHO_PLAN", "gold", "allowed: free, standard"),
        ("TSHJOBS_ZOHO_ACCOUNTS_URL", "accounts.zoho.eu", "must be a URL"),
        ("TSHJOBS_ZOHO_REQUESTS_PER_MINUTE", "20000", "from 1 to 10000"),
        ("TSHJOBS_ZOHO_DAILY_LIMIT", "-1", "from 0 to"),
        ("TSHJOBS_ZOHO_TIMEOUT", "0", "more than 0"),
        ("TSHJOBS_ZOHO_REFRESH_MARGIN", "4000", "from 0 to 1800"),
        ("TSHJOBS_ZOHO_ORGANIZATION_ID", "600 123", "spaces"),
    ],
)
def test_invalid_zoho_setting_named(name, value, expected):
    environ = {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_SECRET_KEY": "k" * 40,
        "TSHJOBS_ERP_DATABASE_URL": "sqlite:///erp.db",
        name: value,
    }

    with pytest.raises(ConfigError) as caught:
        load_settings(environ)

    assert f"{name}={value!r}" in str(caught.value)
    assert expected in str(caught.value)


def test_zoho_settings_resolved_from_plan():
    environ = {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_SECRET_KEY": "k" * 40,
        "TSHJOBS_ERP_DATABASE_URL": "sqlite:///erp.db",
        "TSHJOBS_ZOHO_DATA_CENTRE": "EU",
        "TSHJOBS_ZOHO_PLAN": "professional",
        "TSHJOBS_ZOHO_CLIENT_ID": "1000.CLIENT",
        "TSHJOBS_ZOHO_CLIENT_SECRET": "secret",
        "TSHJOBS_ZOHO_REFRESH_TOKEN": "1000.refresh",
        "TSHJOBS_ZOHO_ORGANIZATION_ID": "600123",
    }

    config = ZohoConfig.from_settings(load_settings(environ))

    assert config.accounts_url == "https://accounts.zoho.eu"
    assert config.daily_limit == 5000
    assert config.max_concurrent == 10
    assert config.requests_per_minute == 100


def test_over_100_a_minute_only_for_sandbox():
    real = zoho_settings(None, "", zoho_requests_per_minute=1200)
    local = zoho_settings(None, "http://127.0.0.1:9", zoho_requests_per_minute=1200)

    with pytest.raises(ZohoNotConfigured, match="more than the 100 calls"):
        ZohoConfig.from_settings(real)
    assert ZohoConfig.from_settings(local).requests_per_minute == 1200


def test_free_plan_limits():
    config = ZohoConfig.from_settings(zoho_settings(None, "", zoho_plan="free"))

    assert config.daily_limit == 1000
    assert config.max_concurrent == 5
