"""Email end to end: an ERP row in PostgreSQL, the ERP's task call, a real
consumer process on Redis, a real SMTP server, and the audit log."""

from __future__ import annotations

import datetime
import io
import json
from decimal import Decimal

import pypdf
import pytest

from tests.consumers import ConsumerProcess, wait_for_state
from tests.services import free_port
from tests.smtp_server import read_eml
from tshjobs.erp.db import connect, init_schema
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.seed import seed_tiny
from tshjobs.mail.capture import CaptureServer
from tshjobs.queue import get_huey, retry_task
from tshjobs.settings import load_settings

XSS_NAME = "<script>alert(1)</script>"


@pytest.fixture
def erp(pg_url):
    init_schema(pg_url)
    seed_tiny(pg_url)
    repository = ErpRepository(pg_url)
    yield repository
    repository.close()


@pytest.fixture
def smtp(tmp_path):
    server = CaptureServer(tmp_path / "mail", host="127.0.0.1", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(settings_env, pg_url, redis_url, smtp, monkeypatch):
    values = {
        **settings_env,
        "TSHJOBS_REDIS_URL": redis_url,
        "TSHJOBS_ERP_DATABASE_URL": pg_url,
        "TSHJOBS_SMTP_PORT": str(smtp.port),
        "TSHJOBS_SMTP_TIMEOUT": "5",
        "TSHJOBS_MAIL_FROM": "TSH Sales <sales@tsh.example>",
        "TSHJOBS_RETRY_DELAYS": "0.5,1,1",
        "TSHJOBS_RETRY_JITTER": "0",
        "TSHJOBS_WORKERS": "2",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_huey(load_settings())
    return values


@pytest.fixture
def consumer(env, erp, tmp_path):
    process = ConsumerProcess(env, tmp_path / "consumer.log").start()
    yield process
    process.stop()


@pytest.fixture
def audit(env):
    return get_huey().audit


def add_customer(pg_url, name, email) -> int:
    with connect(pg_url) as database:
        rows = database.fetch_all_sql(
            "INSERT INTO customers (name, email) VALUES (:name, :email) RETURNING id",
            {"name": name, "email": email},
        )
    return rows[0]["id"]


def first_product(pg_url) -> int:
    with connect(pg_url) as database:
        return database.fetch_all_sql("SELECT min(id) AS id FROM products")[0]["id"]


def new_order(erp, pg_url, name="Müller, Hans", email="hans@example.com") -> int:
    customer_id = add_customer(pg_url, name, email)
    items = [(first_product(pg_url), 3)]
    return erp.create_order(customer_id, items, datetime.date.today())


def received(smtp):
    return sorted(smtp.directory.glob("*.eml"))


def body_parts(message):
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return text, html


def test_order_confirmation_delivered(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_order_confirmation_email

    order_id = new_order(erp, pg_url)
    order = erp.get_order(order_id)

    task_id = send_order_confirmation_email(order_id).id

    row = wait_for_state(audit, task_id, "succeeded")
    assert row["result"].startswith("sent to")
    files = received(smtp)
    assert len(files) == 1
    message = read_eml(files[0])
    assert message["To"].addresses[0].addr_spec == "hans@example.com"
    assert message["To"].addresses[0].display_name == "Müller, Hans"
    assert order.order_number in message["Subject"]
    text, html = body_parts(message)
    assert order.order_number in text
    assert "<" not in text
    assert order.order_number in html
    assert "<table" in html


def test_invoice_email_has_pdf(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_invoice_email

    order_id = new_order(erp, pg_url)
    invoice_id = erp.create_invoice_for_order(order_id, datetime.date.today(), 30)
    invoice = erp.get_invoice(invoice_id)

    wait_for_state(audit, send_invoice_email(invoice_id).id, "succeeded")

    message = read_eml(received(smtp)[0])
    attachments = list(message.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == f"invoice-{invoice.invoice_number}.pdf"
    assert attachments[0].get_content_type() == "application/pdf"
    pdf = pypdf.PdfReader(io.BytesIO(attachments[0].get_content()))
    pdf_text = "".join(page.extract_text() for page in pdf.pages)
    assert invoice.invoice_number in pdf_text
    assert f"{invoice.total:,.2f}" in pdf_text


def test_payment_receipt_and_welcome(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_payment_receipt, send_welcome_email

    order_id = new_order(erp, pg_url, "José Peña", "jose@example.org")
    invoice_id = erp.create_invoice_for_order(order_id, datetime.date.today(), 30)
    payment_id = erp.record_payment(invoice_id, Decimal("0.30"), datetime.date.today())
    customer_id = erp.get_order(order_id).customer.id

    receipt = send_payment_receipt(payment_id).id
    welcome = send_welcome_email(customer_id).id

    wait_for_state(audit, receipt, "succeeded")
    wait_for_state(audit, welcome, "succeeded")
    subjects = sorted(read_eml(path)["Subject"] for path in received(smtp))
    assert len(subjects) == 2
    texts = [body_parts(read_eml(path))[0] for path in received(smtp)]
    assert any("0.30" in text for text in texts)


def test_second_call_sends_nothing(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_order_confirmation_email

    order_id = new_order(erp, pg_url)
    wait_for_state(audit, send_order_confirmation_email(order_id).id, "succeeded")

    again = wait_for_state(
        audit, send_order_confirmation_email(order_id).id, "succeeded"
    )
    forced = send_order_confirmation_email(order_id, force=True).id
    wait_for_state(audit, forced, "succeeded")

    assert again["result"].startswith("skipped: already sent")
    assert len(received(smtp)) == 2


def test_smtp_down_then_up_delivers_once(erp, pg_url, smtp, consumer, audit, tmp_path):
    from tasks.emails import send_order_confirmation_email

    order_id = new_order(erp, pg_url)
    port = smtp.port
    smtp.stop()

    task_id = send_order_confirmation_email(order_id).id

    row = wait_for_state(audit, task_id, "retrying")
    assert "refused" in row["error"].lower()
    server = CaptureServer(tmp_path / "later", host="127.0.0.1", port=port)
    server.start()
    try:
        row = wait_for_state(audit, task_id, "succeeded")
    finally:
        server.stop()
    assert row["attempts"] >= 2
    assert len(list((tmp_path / "later").glob("*.eml"))) == 1


def test_server_drops_connection_between_messages(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_order_confirmation_email

    smtp.drop_after(1)
    orders = [
        new_order(erp, pg_url, f"Customer {n}", f"c{n}@example.com") for n in range(3)
    ]

    task_ids = [send_order_confirmation_email(order_id).id for order_id in orders]

    for task_id in task_ids:
        wait_for_state(audit, task_id, "succeeded")
    recipients = sorted(str(read_eml(path)["To"]) for path in received(smtp))
    assert len(recipients) == 3
    assert len(set(recipients)) == 3


def test_5xx_fails_at_once_with_reason(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_order_confirmation_email

    smtp.reject_next(1, 550, "5.1.1 Mailbox unavailable")
    order_id = new_order(erp, pg_url)

    row = wait_for_state(audit, send_order_confirmation_email(order_id).id, "failed")

    assert row["attempts"] == 1
    assert "550" in row["error"]
    assert "Mailbox unavailable" in row["error"]
    assert received(smtp) == []


def test_missing_order_fails_with_entity(consumer, audit):
    from tasks.emails import send_order_confirmation_email

    row = wait_for_state(audit, send_order_confirmation_email(999999).id, "failed")

    assert row["attempts"] == 1
    assert "order 999999 not found" in row["error"]


def test_customer_without_email_fails(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_welcome_email

    customer_id = add_customer(pg_url, "No Mail Ltd", None)

    row = wait_for_state(audit, send_welcome_email(customer_id).id, "failed")

    assert row["attempts"] == 1
    assert "MissingEmailAddress" in row["error"]
    assert str(customer_id) in row["error"]


def test_script_name_escaped_in_email(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_order_confirmation_email

    order_id = new_order(erp, pg_url, XSS_NAME, "xss@example.com")

    wait_for_state(audit, send_order_confirmation_email(order_id).id, "succeeded")

    text, html = body_parts(read_eml(received(smtp)[0]))
    assert XSS_NAME not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS_NAME in text


def test_dashboard_retry_resends_failed_email(erp, pg_url, smtp, consumer, audit):
    from tasks.emails import send_order_confirmation_email

    smtp.reject_next(1, 554, "5.7.1 Rejected for now")
    order_id = new_order(erp, pg_url)
    first = send_order_confirmation_email(order_id).id
    wait_for_state(audit, first, "failed")

    second = retry_task(first, "staff")

    row = wait_for_state(audit, second, "succeeded")
    assert row["retry_of"] == first
    assert len(received(smtp)) == 1


@pytest.fixture
def staff(env):
    """A logged-in dashboard client on the same settings as the consumer."""
    from dashboard import create_app
    from tests.test_dashboard import login
    from tshjobs import users

    settings = load_settings()
    users.add_user(settings, "staff", "a long staff password")
    client = create_app(settings, {"TESTING": True}).test_client()
    assert login(client, "staff", "a long staff password").status_code == 302
    return client


def test_script_customer_escaped_on_dashboard(erp, pg_url, consumer, audit, staff):
    from tasks.emails import send_welcome_email
    from tests.test_dashboard import page_token

    customer_id = add_customer(pg_url, XSS_NAME, None)
    task_id = send_welcome_email(customer_id).id
    row = wait_for_state(audit, task_id, "failed")
    assert XSS_NAME in row["error"]

    detail = staff.get(f"/tasks/{task_id}").get_data(as_text=True)
    listing = staff.get("/tasks?state=failed").get_data(as_text=True)

    assert XSS_NAME not in detail
    assert XSS_NAME not in listing
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert page_token(staff)


def test_retry_button_resends_failed_email(erp, pg_url, smtp, consumer, audit, staff):
    from tasks.emails import send_order_confirmation_email
    from tests.test_dashboard import page_token

    smtp.reject_next(1, 550, "5.7.1 Rejected for now")
    order_id = new_order(erp, pg_url)
    first = send_order_confirmation_email(order_id).id
    wait_for_state(audit, first, "failed")

    response = staff.post(
        f"/tasks/{first}/retry",
        data={"csrf_token": page_token(staff, f"/tasks/{first}")},
    )

    assert response.status_code == 302
    second = audit.get(first)["retried_by"]
    row = wait_for_state(audit, second, "succeeded")
    assert row["retry_of"] == first
    assert json.loads(row["args"]) == [order_id]
    assert len(received(smtp)) == 1
    assert audit.actions()[0]["username"] == "staff"
