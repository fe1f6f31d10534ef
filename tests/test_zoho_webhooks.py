"""Zoho Books webhooks: the endpoint through Flask's test client on the SQLite
queue, the task against a PostgreSQL ERP, and one delivery end to end
through Redis and a real consumer process."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import threading
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from dashboard import create_app
from dashboard.webhooks import MAX_BODY_BYTES
from tasks.zoho_webhooks import event_log, process_zoho_webhook
from tests.consumers import ConsumerProcess, wait_for_state
from tshjobs import queue
from tshjobs.erp.db import connect, init_schema
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.seed import seed_tiny
from tshjobs.erp.webhook_writes import ZohoChangeConflict
from tshjobs.errors import ConfigError
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings
from tshjobs.webhook_events import WebhookInProgress, event_key

TOKEN = "tok-" + "a1b2c3d4" * 4
SECRET = "WebhookSecret2024"
URL = "/webhooks/zoho"
ZOHO_INVOICE_ID = "460000000027061"
PAYMENT_DATE = datetime.date(2026, 3, 2)


@pytest.fixture
def env(settings_env, pg_url, monkeypatch):
    values = {
        **settings_env,
        "TSHJOBS_ERP_DATABASE_URL": pg_url,
        "TSHJOBS_ZOHO_WEBHOOK_TOKEN": TOKEN,
        "TSHJOBS_TASK_MODULES": "tasks",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def settings(env):
    settings = load_settings()
    get_huey(settings)
    return settings


@pytest.fixture
def erp(pg_url):
    init_schema(pg_url)
    seed_tiny(pg_url)
    repository = ErpRepository(pg_url)
    yield repository
    repository.close()


@pytest.fixture
def client(settings):
    return create_app(settings, {"TESTING": True}).test_client()


def app_client(env, monkeypatch, **overrides):
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    get_huey(settings)
    return create_app(settings, {"TESTING": True}).test_client()


def open_invoice(erp: ErpRepository) -> dict:
    """Return a sent, unpaid invoice of the seed, linked to a Zoho id."""
    rows = erp.db.fetch_all_sql(
        "SELECT id, total FROM invoices WHERE status = 'sent' AND amount_paid = 0"
        " ORDER BY id LIMIT 1"
    )
    erp.set_zoho_id("invoice", rows[0]["id"], ZOHO_INVOICE_ID)
    return rows[0]


def invoice_event(invoice, balance, modified="2026-03-02T10:00:00+0000") -> dict:
    return {
        "invoice": {
            "invoice_id": ZOHO_INVOICE_ID,
            "status": "paid" if balance == 0 else "partially_paid",
            "total": float(invoice["total"]),
            "balance": float(balance),
            "last_modified_time": modified,
            "custom_fields": [
                {"api_name": "cf_erp_id", "value": f"INV-{invoice['id']}"}
            ],
        }
    }


def payment_event(amount, payment_id="9100001") -> dict:
    return {
        "payment": {
            "payment_id": payment_id,
            "date": "2026-03-02",
            "amount": float(amount),
            "payment_mode": "Bank Transfer",
            "reference_number": "TXN-98765",
            "invoices": [
                {"invoice_id": ZOHO_INVOICE_ID, "amount_applied": float(amount)}
            ],
        }
    }


def as_body(event: dict) -> dict:
    """Return the event as the endpoint passes it on: fractions as text."""
    return json.loads(json.dumps(event), parse_float=str)


def run_task(event: dict) -> str:
    """Run process_zoho_webhook in this thread, as a worker would."""
    return process_zoho_webhook.s(event).execute()


def post_json(client, event, headers=None, query=""):
    return client.post(
        URL + query,
        data=json.dumps(event),
        content_type="application/json",
        headers={"X-TSH-Webhook-Token": TOKEN} if headers is None else headers,
    )


def invoice_row(erp, invoice_id) -> dict:
    return erp.db.fetch_all_sql(
        "SELECT amount_paid, status FROM invoices WHERE id = :id", {"id": invoice_id}
    )[0]


def zoho_payments(erp) -> list[dict]:
    return erp.db.fetch_all_sql(
        "SELECT id, amount, method, reference, invoice_id FROM payments"
        " WHERE zoho_payment_id IS NOT NULL"
    )


def audit_count(settings) -> int:
    return sum(queue.audit_log(settings).counts_by_state().values())


def signed(body: bytes, encoding: str) -> str:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


# Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TSHJOBS_ZOHO_WEBHOOK_SECRET", "short1"),
        ("TSHJOBS_ZOHO_WEBHOOK_SECRET", "has-a-dash-in-it"),
        ("TSHJOBS_ZOHO_WEBHOOK_SECRET", "x" * 51),
        ("TSHJOBS_ZOHO_WEBHOOK_TOKEN", "too-short"),
        ("TSHJOBS_ZOHO_WEBHOOK_TOKEN", "has/slash" + "x" * 20),
    ],
)
def test_invalid_webhook_setting_rejected(env, name, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, name: value})

    message = str(caught.value)
    assert name in message
    assert value not in message


def test_webhook_secret_accepted(env):
    settings = load_settings({**env, "TSHJOBS_ZOHO_WEBHOOK_SECRET": SECRET})

    assert settings.zoho_webhook_secret == SECRET
    assert settings.describe()["TSHJOBS_ZOHO_WEBHOOK_SECRET"] == "(set)"
    assert settings.describe()["TSHJOBS_ZOHO_WEBHOOK_TOKEN"] == "(set)"


# The endpoint


def test_no_token_configured_answers_404(env, monkeypatch):
    client = app_client(env, monkeypatch, TSHJOBS_ZOHO_WEBHOOK_TOKEN="")

    response = post_json(client, {"invoice": {}})

    assert response.status_code == 404
    assert response.get_json() == {"error": "not found"}


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, ""),
        ({"X-TSH-Webhook-Token": "wrong-token-0000000000"}, ""),
        ({}, "?token=wrong-token-0000000000"),
        ({"X-TSH-Webhook-Token": TOKEN[:-1]}, ""),
    ],
)
def test_bad_token_rejected(client, settings, caplog, headers, query):
    before = (queue.queue_length(settings), audit_count(settings))

    with caplog.at_level(logging.WARNING, logger="dashboard.webhooks"):
        response = post_json(client, {"invoice": {}}, headers=headers, query=query)

    assert response.status_code == 401
    assert response.get_json() == {"error": "invalid or missing token"}
    assert (queue.queue_length(settings), audit_count(settings)) == before
    assert "127.0.0.1" in caplog.text
    assert "invalid or missing token" in caplog.text
    assert "wrong-token" not in caplog.text
    assert TOKEN[:-1] not in caplog.text


def test_repeated_rejections_logged_once(client, caplog):
    with caplog.at_level(logging.WARNING, logger="dashboard.webhooks"):
        for _ in range(20):
            post_json(client, {}, headers={"X-TSH-Webhook-Token": "x"})

    lines = [r for r in caplog.records if r.name == "dashboard.webhooks"]
    assert len(lines) == 1


def test_login_not_required_and_no_csrf(client, settings):
    response = post_json(client, {"invoice": {}})

    assert response.status_code == 202
    assert "Location" not in response.headers


@pytest.mark.parametrize("where", ["header", "query"])
def test_token_accepted(client, settings, where):
    before = queue.queue_length(settings)
    headers = {"X-TSH-Webhook-Token": TOKEN} if where == "header" else {}
    query = "?" + urlencode({"token": TOKEN}) if where == "query" else ""

    response = post_json(client, {"invoice": {}}, headers=headers, query=query)

    assert response.status_code == 202
    task_id = response.get_json()["task_id"]
    assert queue.audit_log(settings).get(task_id)["state"] == "queued"
    assert queue.queue_length(settings) == before + 1


@pytest.mark.parametrize(
    ("signature", "status"),
    [(None, 401), ("0" * 64, 401), ("hex", 202), ("base64", 202)],
)
def test_signature_checked(env, monkeypatch, signature, status):
    client = app_client(env, monkeypatch, TSHJOBS_ZOHO_WEBHOOK_SECRET=SECRET)
    body = json.dumps({"invoice": {"invoice_id": "1"}}).encode()
    headers = {"X-TSH-Webhook-Token": TOKEN}
    if signature in ("hex", "base64"):
        headers["X-Zoho-Webhook-Signature"] = signed(body, signature)
    elif signature is not None:
        headers["X-Zoho-Webhook-Signature"] = signature

    response = client.post(
        URL, data=body, content_type="application/json", headers=headers
    )

    assert response.status_code == status
    if status == 401:
        assert response.get_json() == {"error": "invalid or missing signature"}


def test_signature_of_other_body_rejected(env, monkeypatch):
    client = app_client(env, monkeypatch, TSHJOBS_ZOHO_WEBHOOK_SECRET=SECRET)
    headers = {
        "X-TSH-Webhook-Token": TOKEN,
        "X-Zoho-Webhook-Signature": signed(b'{"invoice": {}}', "hex"),
    }

    response = client.post(
        URL, data=b'{"invoice": {"x": 1}}', content_type="application/json",
        headers=headers,
    )  # fmt: skip

    assert response.status_code == 401


def test_too_large_body_answers_413(client, settings):
    before = queue.queue_length(settings)
    body = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'

    response = client.post(
        URL, data=body, content_type="application/json",
        headers={"X-TSH-Webhook-Token": TOKEN},
    )  # fmt: skip

    assert response.status_code == 413
    assert queue.queue_length(settings) == before


def test_body_over_dashboard_limit_accepted(client):
    # The dashboard's own forms are limited to 64 KB; webhooks to 1 MB.
    event = {"invoice": {"notes": "x" * 200_000}}

    response = post_json(client, event)

    assert response.status_code == 202


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"JSONString": '{"invoice": {"balance": 1.50}}'},
         {"invoice": {"balance": "1.50"}}),
        ({"payload": '{"payment": {"payment_id": "7"}}'},
         {"payment": {"payment_id": "7"}}),
        ({"invoice_id": "46", "balance": "0.00"},
         {"invoice_id": "46", "balance": "0.00"}),
    ],
)  # fmt: skip
def test_form_body_queued(client, settings, form, expected):
    response = client.post(URL, data=form, headers={"X-TSH-Webhook-Token": TOKEN})

    assert response.status_code == 202
    row = queue.audit_log(settings).get(response.get_json()["task_id"])
    assert json.loads(row["args"]) == [expected]


def test_json_amounts_keep_their_digits(client, settings):
    response = client.post(
        URL, data=b'{"invoice": {"balance": 0.30, "total": 100}}',
        content_type="application/json", headers={"X-TSH-Webhook-Token": TOKEN},
    )  # fmt: skip

    row = queue.audit_log(settings).get(response.get_json()["task_id"])
    assert json.loads(row["args"]) == [{"invoice": {"balance": "0.30", "total": 100}}]


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'{"a": NaN}', b"\xff\xfe", b"[" * 5000]
)
def test_invalid_body_answers_400(client, settings, body):
    before = queue.queue_length(settings)

    response = client.post(
        URL, data=body, content_type="application/json",
        headers={"X-TSH-Webhook-Token": TOKEN},
    )  # fmt: skip

    assert response.status_code == 400
    assert response.get_json() == {"error": "invalid body"}
    assert queue.queue_length(settings) == before


# The task against the ERP


def test_invoice_paid_updates_erp(settings, erp):
    invoice = open_invoice(erp)

    outcome = run_task(as_body(invoice_event(invoice, Decimal("0.00"))))

    row = invoice_row(erp, invoice["id"])
    assert row["amount_paid"] == invoice["total"]
    assert row["status"] == "paid"
    assert outcome.startswith(f"invoice {invoice['id']}: amount_paid 0.00 -> ")
    assert outcome.endswith("status sent -> paid")


def test_invoice_balance_changed_partly_paid(settings, erp):
    invoice = open_invoice(erp)
    balance = invoice["total"] - Decimal("10.00")

    run_task(as_body(invoice_event(invoice, balance)))

    row = invoice_row(erp, invoice["id"])
    assert row["amount_paid"] == Decimal("10.00")
    assert row["status"] == "sent"


def test_invoice_found_by_zoho_id(settings, erp):
    invoice = open_invoice(erp)
    event = invoice_event(invoice, Decimal("0.00"))
    del event["invoice"]["custom_fields"]

    run_task(as_body(event))

    assert invoice_row(erp, invoice["id"])["status"] == "paid"


def test_payment_recorded_in_erp(settings, erp):
    invoice = open_invoice(erp)

    outcome = run_task(as_body(payment_event(Decimal("25.10"))))

    payments = zoho_payments(erp)
    assert len(payments) == 1
    assert payments[0]["amount"] == Decimal("25.10")
    assert payments[0]["method"] == "bank_transfer"
    assert payments[0]["reference"] == "TXN-98765"
    assert payments[0]["invoice_id"] == invoice["id"]
    assert invoice_row(erp, invoice["id"])["amount_paid"] == Decimal("25.10")
    assert outcome == (
        f"recorded Zoho payment 9100001 of 25.1 as ERP payment {payments[0]['id']}; "
        f"invoice {invoice['id']}: amount_paid 0.00 -> 25.10, status sent"
    )


def test_replayed_delivery_applied_once(settings, erp):
    invoice = open_invoice(erp)
    event = as_body(payment_event(Decimal("40.00")))

    first = run_task(event)
    second = run_task(event)

    assert first.startswith("recorded")
    assert second.startswith(f"duplicate: event {event_key(event)}")
    assert len(zoho_payments(erp)) == 1
    assert invoice_row(erp, invoice["id"])["amount_paid"] == Decimal("40.00")


def test_replayed_post_applied_once(client, settings, erp):
    invoice = open_invoice(erp)
    event = payment_event(Decimal("40.00"))

    ids = [post_json(client, event).get_json()["task_id"] for _ in range(2)]
    events = [json.loads(queue.audit_log(settings).get(i)["args"])[0] for i in ids]
    outcomes = [run_task(body) for body in events]

    assert outcomes[0].startswith("recorded")
    assert outcomes[1].startswith("duplicate")
    assert len(zoho_payments(erp)) == 1
    assert invoice_row(erp, invoice["id"])["amount_paid"] == Decimal("40.00")


def test_concurrent_copies_applied_once(settings, erp):
    invoice = open_invoice(erp)
    event = as_body(payment_event(Decimal("40.00")))
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def worker():
        barrier.wait()
        try:
            outcomes.append(run_task(event))
        except WebhookInProgress as exc:
            outcomes.append(f"in progress: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 4
    assert sum(outcome.startswith("recorded") for outcome in outcomes) == 1
    assert all(
        outcome.startswith(("recorded", "duplicate", "in progress"))
        for outcome in outcomes
    )
    assert run_task(event).startswith("duplicate")
    assert len(zoho_payments(erp)) == 1
    assert invoice_row(erp, invoice["id"])["amount_paid"] == Decimal("40.00")


def test_concurrent_erp_writes_insert_once(settings, erp, pg_url):
    invoice = open_invoice(erp)
    barrier = threading.Barrier(4)
    results = []

    def worker():
        with ErpRepository(pg_url) as own:
            barrier.wait()
            results.append(
                own.record_zoho_payment(
                    invoice["id"], Decimal("5.00"), PAYMENT_DATE, "9100002"
                )
            )

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(result is not None for result in results) == 1
    assert len(zoho_payments(erp)) == 1
    assert invoice_row(erp, invoice["id"])["amount_paid"] == Decimal("5.00")


@pytest.mark.parametrize("payment_first", [True, False])
def test_payment_and_balance_counted_once(settings, erp, payment_first):
    invoice = open_invoice(erp)
    events = [
        as_body(payment_event(invoice["total"])),
        as_body(invoice_event(invoice, Decimal("0.00"))),
    ]
    if not payment_first:
        events.reverse()

    for event in events:
        run_task(event)

    row = invoice_row(erp, invoice["id"])
    assert row["amount_paid"] == invoice["total"]
    assert row["status"] == "paid"
    assert len(zoho_payments(erp)) == 1


def test_late_older_invoice_event_ignored(settings, erp):
    invoice = open_invoice(erp)
    newer = invoice_event(invoice, Decimal("0.00"), "2026-03-02T12:00:00+0000")
    older = invoice_event(invoice, invoice["total"], "2026-03-02T13:00:00+0200")

    run_task(as_body(newer))
    outcome = run_task(as_body(older))

    assert outcome.startswith("ignored: stale event")
    assert invoice_row(erp, invoice["id"])["status"] == "paid"


def test_unknown_event_ignored(settings, erp):
    event = {"contact": {"contact_id": "1", "contact_name": "Acme"}}

    outcome = run_task(event)

    assert outcome == "ignored: no invoice or payment in the event (keys: contact)"
    record = event_log(settings).get(event_key(event))
    assert record["state"] == "done"
    assert record["outcome"] == outcome


def test_deleted_payment_event_ignored(settings, erp):
    open_invoice(erp)
    event = {"event_type": "payment_deleted", **as_body(payment_event(Decimal(1)))}

    outcome = run_task(event)

    assert outcome == "ignored: payment_deleted events are not applied"
    assert zoho_payments(erp) == []


def test_unmatched_invoice_ignored(settings, erp):
    event = {"invoice": {"invoice_id": "999", "status": "paid", "balance": "0"}}

    outcome = run_task(event)

    assert outcome == "ignored: Zoho invoice 999 matches no ERP invoice"


def test_event_id_used_as_key(settings, erp):
    open_invoice(erp)
    first = {"event_id": "ev-1", **as_body(payment_event(Decimal("3.00")))}
    second = {**first, "event_time": "a later delivery"}

    run_task(first)
    outcome = run_task(second)

    assert outcome.startswith("duplicate: event event_id:ev-1")
    assert len(zoho_payments(erp)) == 1


def test_conflict_fails_and_releases_claim(settings, erp):
    invoice = open_invoice(erp)
    with connect(erp.db.url) as database:
        database.execute_sql(
            "UPDATE invoices SET status = 'void' WHERE id = :id", {"id": invoice["id"]}
        )
    event = as_body(payment_event(Decimal("3.00")))

    with pytest.raises(ZohoChangeConflict):
        run_task(event)

    assert event_log(settings).get(event_key(event)) is None
    assert zoho_payments(erp) == []


# End to end


@pytest.fixture
def redis_env(env, redis_url, monkeypatch):
    values = {**env, "TSHJOBS_REDIS_URL": redis_url, "TSHJOBS_WORKERS": "2"}
    monkeypatch.setenv("TSHJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("TSHJOBS_WORKERS", "2")
    return values


def test_delivery_end_to_end(redis_env, erp, tmp_path):
    settings = load_settings()
    get_huey(settings)
    client = create_app(settings, {"TESTING": True}).test_client()
    invoice = open_invoice(erp)
    consumer = ConsumerProcess(redis_env, tmp_path / "consumer.log").start()
    try:
        response = post_json(client, invoice_event(invoice, Decimal("0.00")))
        task_id = response.get_json()["task_id"]
        row = wait_for_state(queue.audit_log(settings), task_id, "succeeded")
    finally:
        consumer.stop()

    assert response.status_code == 202
    assert row["result"].endswith("status sent -> paid")
    assert invoice_row(erp, invoice["id"])["status"] == "paid"
    assert task_id in consumer.log()
