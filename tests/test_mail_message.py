"""Message building (tshjobs.mail.message) and the email kinds (compose)."""

from __future__ import annotations

import datetime
import re
from decimal import Decimal
from email.header import decode_header, make_header
from email.headerregistry import Address

import pytest

from tests.smtp_server import (
    ARABIC_NAME,
    SHORT_ARABIC_NAME,
    reparse,
    sample_customer,
    sample_invoice,
    sample_order,
    sample_payment,
    smtp_settings,
)
from tshjobs.errors import MissingEmailAddress, PermanentError
from tshjobs.mail import compose
from tshjobs.mail.compose import ReportTable
from tshjobs.mail.message import (
    Attachment,
    InvalidMessageError,
    build_message,
    parse_address,
)

SENDER = Address("TSH Sales", addr_spec="sales@tsh.example")
TAG = re.compile(r"<[A-Za-z/!][^>]*>")

HTML_WITH_TABLE = """<!DOCTYPE html>
<html>
<body>
<p>Line one
line two</p>
<table>
  <tr>
    <td>A</td>
    <td>B</td>
  </tr>
</table>
</body>
</html>
"""
TEXT_BODY = "Line one\nline two\n\n- item 1\n- item 2\n"


def settings():
    return smtp_settings(25)


def message_to(*recipients: Address, **kwargs):
    values = {
        "sender": SENDER,
        "to": list(recipients),
        "subject": "Test subject",
        "text": TEXT_BODY,
        "html": HTML_WITH_TABLE,
    }
    values.update(kwargs)
    return build_message(**values)


def raw_header(raw: bytes, name: str) -> str:
    """Return a header of a serialised message as sent, unfolded."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(
        rf"^{name}: (.*?)\r\n(?=\S)", head + "\r\nX", re.DOTALL | re.MULTILINE
    )
    assert match, f"no {name} header"
    return re.sub(r"\r\n[ \t]", " ", match.group(1))


def rfc2047_decode(value: str) -> str:
    """Decode encoded words following RFC 2047 section 6.2: whitespace
    between two adjacent encoded words is dropped."""
    return str(make_header(decode_header(value)))


def body_parts(message):
    """Return the text and HTML bodies as a reader gets them. On the wire
    text lines end in CRLF (RFC 2046 section 4.1.1), which the parser keeps in
    7bit parts, so line ends are compared as LF."""
    parsed = reparse(message)
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    return text.replace("\r\n", "\n"), html.replace("\r\n", "\n")


def test_message_is_multipart_alternative():
    message = message_to(Address("Ali", addr_spec="ali@example.iq"))
    parsed = reparse(message)

    assert parsed.get_content_type() == "multipart/alternative"
    types = [part.get_content_type() for part in parsed.iter_parts()]
    assert types == ["text/plain", "text/html"]


def test_bodies_are_sent_unaltered():
    message = message_to(Address("Ali", addr_spec="ali@example.iq"))
    text, html = body_parts(message)

    assert html == HTML_WITH_TABLE
    assert text == TEXT_BODY
    assert "<br" not in html
    assert "<br" not in text
    assert TAG.search(text) is None


def test_non_ascii_bodies_are_sent_unaltered():
    text_body = "Dear Müller,\nفاتورة رقم ١٢٣\n"
    html_body = "<p>Dear Müller,\nفاتورة رقم ١٢٣</p>\n"
    message = message_to(
        Address("Ali", addr_spec="ali@example.iq"), text=text_body, html=html_body
    )
    text, html = body_parts(message)

    assert text == text_body
    assert html == html_body
    assert message.as_bytes().isascii()


def test_attachments_make_multipart_mixed():
    attachment = Attachment("report.csv", b"a,b\n1,2\n", "text/csv")
    message = message_to(
        Address("Ali", addr_spec="ali@example.iq"), attachments=[attachment]
    )
    parsed = reparse(message)

    assert parsed.get_content_type() == "multipart/mixed"
    first, second = parsed.iter_parts()
    assert first.get_content_type() == "multipart/alternative"
    assert second.get_content_type() == "text/csv"
    assert second.get_content() == "a,b\n1,2\n"
    assert second.get_filename() == "report.csv"


def test_display_name_with_comma_stays_one_address():
    message = message_to(
        Address("Müller, Hans", addr_spec="hans@example.de"),
        Address("Smith, John", addr_spec="john@example.com"),
    )
    parsed = reparse(message)

    addresses = parsed["To"].addresses
    assert len(addresses) == 2
    assert addresses[0].display_name == "Müller, Hans"
    assert addresses[0].addr_spec == "hans@example.de"
    assert addresses[1].display_name == "Smith, John"
    assert addresses[1].addr_spec == "john@example.com"


def test_short_arabic_display_name_round_trips():
    message = message_to(Address(SHORT_ARABIC_NAME, addr_spec="ali@example.iq"))
    parsed = reparse(message)

    addresses = parsed["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].display_name == SHORT_ARABIC_NAME
    assert addresses[0].addr_spec == "ali@example.iq"


def test_long_arabic_display_name_round_trips():
    message = message_to(Address(ARABIC_NAME, addr_spec="info@alnoor.iq"))
    raw = message.as_bytes()
    parsed = reparse(message)

    addresses = parsed["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].addr_spec == "info@alnoor.iq"
    assert rfc2047_decode(raw_header(raw, "To")) == f"{ARABIC_NAME} <info@alnoor.iq>"
    # NOTE: Python's own parser (3.11.7) adds a space between two adjacent
    # encoded words in a display name, against RFC 2047, so this compares
    # the words only.
    assert addresses[0].display_name.split() == ARABIC_NAME.split()


def test_arabic_subject_keeps_every_space():
    subject = f"فاتورة رقم INV-2025-0042 من {ARABIC_NAME} بتاريخ ٥ آذار ٢٠٢٥"
    message = message_to(Address("Ali", addr_spec="ali@example.iq"), subject=subject)
    raw = message.as_bytes()
    parsed = reparse(message)

    assert str(parsed["Subject"]) == subject
    assert rfc2047_decode(raw_header(raw, "Subject")) == subject
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78


def test_sender_display_name_is_encoded():
    sender = Address(ARABIC_NAME, addr_spec="sales@tsh.example")
    message = message_to(Address("Ali", addr_spec="ali@example.iq"), sender=sender)
    raw = message.as_bytes()

    assert raw.isascii()
    decoded = rfc2047_decode(raw_header(raw, "From"))
    assert decoded == f"{ARABIC_NAME} <sales@tsh.example>"


def test_message_ids_differ_for_identical_messages():
    first = message_to(Address("Ali", addr_spec="ali@example.iq"))
    second = message_to(Address("Ali", addr_spec="ali@example.iq"))

    assert first["Message-ID"] != second["Message-ID"]
    assert str(first["Message-ID"]).endswith("@tsh.example>")
    assert str(second["Message-ID"]).endswith("@tsh.example>")


def test_message_has_date_header():
    message = message_to(Address("Ali", addr_spec="ali@example.iq"))
    parsed = reparse(message)

    assert parsed["Date"].datetime is not None
    assert parsed["Date"].datetime.tzinfo is not None


@pytest.mark.parametrize(
    "filename",
    ["فاتورة-Müller.pdf", "Rechnung für Müller & Söhne, März 2025 — endgültig.pdf"],
)
def test_attachment_name_uses_rfc2231(filename):
    attachment = Attachment(filename, b"%PDF-1.4\n", "application/pdf")
    message = message_to(
        Address("Ali", addr_spec="ali@example.iq"), attachments=[attachment]
    )
    raw = message.as_bytes()
    parsed = reparse(message)

    assert b"filename*" in raw
    assert b"utf-8''" in raw
    assert raw.isascii()
    (part,) = parsed.iter_attachments()
    assert part.get_filename() == filename
    assert part.get_content() == b"%PDF-1.4\n"


@pytest.mark.parametrize(
    ("filename", "mime_type", "expected"),
    [
        ("", "application/pdf", "file name is missing"),
        ("   ", "application/pdf", "file name is missing"),
        (None, "application/pdf", "file name is missing"),
        ("report.pdf", "", "invalid MIME type"),
        ("report.pdf", None, "invalid MIME type"),
        ("report.pdf", "pdf", "invalid MIME type"),
        ("report.pdf", "None/None", None),
        ("../report.pdf", "application/pdf", "path separator"),
        ("report\r\n.pdf", "application/pdf", "control character"),
    ],
)
def test_attachment_rejects_invalid_values(filename, mime_type, expected):
    if expected is None:
        # "None/None" is syntactically a type; check it is kept as given
        # rather than produced from a missing type.
        attachment = Attachment(filename, b"x", mime_type)
        assert attachment.mime_type == "None/None"
        return

    with pytest.raises(InvalidMessageError) as caught:
        Attachment(filename, b"x", mime_type)
    assert expected in str(caught.value)


def test_attachment_rejects_text_content():
    with pytest.raises(InvalidMessageError) as caught:
        Attachment("report.csv", "a,b", "text/csv")
    assert "must be bytes" in str(caught.value)


@pytest.mark.parametrize(
    "subject",
    ["Hello\r\nBcc: victim@example.com", "Hello\nBcc: x@example.com", "Hi\rX: y"],
)
def test_subject_header_injection_is_rejected(subject):
    recipient = Address("Ali", addr_spec="ali@example.iq")

    with pytest.raises(InvalidMessageError) as caught:
        message_to(recipient, subject=subject)
    assert "control character" in str(caught.value)


def test_address_with_line_break_cannot_be_made():
    # The standard library (3.11.7) already rejects CR and LF in Address.
    with pytest.raises(ValueError):
        Address("Hello\r\nBcc: victim@example.com", addr_spec="ali@example.iq")


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x00", "\x85", "\u2028"])
@pytest.mark.parametrize("field", ["display_name", "sender_name"])
def test_name_with_control_character_is_rejected(field, control):
    name = f"Hello{control}Bcc: victim@example.com"
    kwargs = {}
    recipient = Address("Ali", addr_spec="ali@example.iq")
    if field == "display_name":
        recipient = Address(name, addr_spec="ali@example.iq")
    else:
        kwargs["sender"] = Address(name, addr_spec="sales@tsh.example")

    with pytest.raises(InvalidMessageError) as caught:
        message_to(recipient, **kwargs)
    assert "control character" in str(caught.value)


def test_invalid_message_error_is_permanent():
    assert issubclass(InvalidMessageError, PermanentError)
    assert issubclass(InvalidMessageError, ValueError)


@pytest.mark.parametrize(
    "text",
    ["", "plain", "a@", "@b.com", "a b@c.com", "a@b.com, c@d.com", "<a@b.com>"],
)
def test_parse_address_rejects_invalid(text):
    with pytest.raises(InvalidMessageError):
        parse_address(text)


def test_parse_address_converts_international_domain():
    address = parse_address("info@مثال.عراق")

    assert address.addr_spec.isascii()
    assert address.domain.startswith("xn--")


def test_customer_address_names_the_customer():
    customer = sample_customer(name="Müller, Hans", email=" hans@example.de ")
    address = compose.customer_address(customer)

    assert address.display_name == "Müller, Hans"
    assert address.addr_spec == "hans@example.de"


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        (None, "has no email address"),
        ("", "has no email address"),
        ("   ", "has no email address"),
        ("not-an-email", "invalid email address"),
        ("a@b.com, c@d.com", "invalid email address"),
        ("hans@", "invalid email address"),
        ("hans@example.de\r\nBcc: x@y.z", "invalid email address"),
    ],
)
def test_missing_email_address_names_customer(email, expected):
    customer = sample_customer(id=4711, email=email)

    with pytest.raises(MissingEmailAddress) as caught:
        compose.welcome(customer, settings())
    assert "customer 4711" in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: compose.order_confirmation(
            sample_order(customer=sample_customer(email=None)), settings()
        ),
        lambda: compose.invoice(
            sample_invoice(customer=sample_customer(email="")), settings()
        ),
        lambda: compose.payment_receipt(
            sample_payment(customer=sample_customer(email="x")), settings()
        ),
        lambda: compose.overdue_reminder(
            sample_invoice(customer=sample_customer(email=None)),
            settings(),
            datetime.date(2025, 5, 1),
        ),
    ],
)
def test_every_kind_raises_missing_email_address(build):
    with pytest.raises(MissingEmailAddress):
        build()


def test_customer_name_injection_is_rejected():
    customer = sample_customer(name="Hans\r\nBcc: victim@example.com")

    with pytest.raises(InvalidMessageError) as caught:
        compose.welcome(customer, settings())
    assert "customer name" in str(caught.value)


def test_script_customer_name_is_escaped_in_html():
    name = "<script>alert(1)</script>"
    message = compose.welcome(sample_customer(name=name), settings())
    text, html = body_parts(message)

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f"Dear {name}," in text


def test_sender_comes_from_settings():
    custom = smtp_settings(25, mail_from="TSH Billing <billing@tsh.example>")
    message = compose.welcome(sample_customer(), custom)
    parsed = reparse(message)

    (sender,) = parsed["From"].addresses
    assert sender.display_name == "TSH Billing"
    assert sender.addr_spec == "billing@tsh.example"
    assert str(message["Message-ID"]).endswith("@tsh.example>")


def test_order_confirmation_content():
    order = sample_order()
    message = compose.order_confirmation(order, settings())
    parsed = reparse(message)
    text, html = body_parts(message)

    assert str(parsed["Subject"]) == "Order SO-2025-0501 confirmed"
    assert parsed["To"].addresses[0].addr_spec == "hans.mueller@example.de"
    for body in (text, html):
        assert "SO-2025-0501" in body
        assert "5 March 2025" in body
        assert "253,703.50 IQD" in body
        assert "3,703.50 IQD" in body
        assert "CAB-6" in body
        assert "Switch 24 ports" in body
    assert TAG.search(text) is None
    assert "<table" in html


def test_invoice_attaches_pdf():
    message = compose.invoice(sample_invoice(), settings())
    parsed = reparse(message)
    text, html = body_parts(message)

    assert str(parsed["Subject"]) == "Invoice INV-2025-0042 from TSH"
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "invoice-INV-2025-0042.pdf"
    assert attachment.get_content().startswith(b"%PDF-")
    for body in (text, html):
        assert "INV-2025-0042" in body
        assert "4 April 2025" in body
        assert "252,703.50 IQD" in body
    assert TAG.search(text) is None


def test_invoice_file_name_drops_path_characters():
    message = compose.invoice(
        sample_invoice(invoice_number="INV/2025 0042"), settings()
    )
    (attachment,) = reparse(message).iter_attachments()

    assert attachment.get_filename() == "invoice-INV-2025-0042.pdf"


def test_payment_receipt_content():
    message = compose.payment_receipt(sample_payment(), settings())
    parsed = reparse(message)
    text, html = body_parts(message)

    assert str(parsed["Subject"]) == "Payment receipt PAY-2025-0009"
    for body in (text, html):
        assert "PAY-2025-0009" in body
        assert "1,000.00 IQD" in body
        assert "20 March 2025" in body
        assert "bank transfer" in body
        assert "TRX-778899" in body
        assert "INV-2025-0042" in body
    assert TAG.search(text) is None


def test_payment_receipt_without_invoice():
    payment = sample_payment(invoice=None, reference=None)
    text, html = body_parts(compose.payment_receipt(payment, settings()))

    assert "1,000.00" in text
    assert "Invoice" not in text
    assert "Reference" not in html


def test_welcome_content():
    message = compose.welcome(sample_customer(), settings())
    parsed = reparse(message)
    text, html = body_parts(message)

    assert str(parsed["Subject"]) == "Welcome to TSH"
    for body in (text, html):
        assert "Welcome to TSH" in body
        assert "hans.mueller@example.de" in body
    assert TAG.search(text) is None


def test_overdue_reminder_content():
    message = compose.overdue_reminder(
        sample_invoice(), settings(), datetime.date(2025, 4, 14)
    )
    parsed = reparse(message)
    text, html = body_parts(message)

    subject = "Payment reminder: invoice INV-2025-0042 is overdue"
    assert str(parsed["Subject"]) == subject
    for body in (text, html):
        assert "10 days overdue" in body
        assert "252,703.50 IQD" in body
        assert "4 April 2025" in body
    assert TAG.search(text) is None


def test_overdue_reminder_one_day_is_singular():
    message = compose.overdue_reminder(
        sample_invoice(), settings(), datetime.date(2025, 4, 5)
    )
    text, _ = body_parts(message)

    assert "1 day overdue" in text


@pytest.mark.parametrize(
    ("invoice", "as_of", "expected"),
    [
        (sample_invoice(), datetime.date(2025, 4, 4), "not overdue"),
        (
            sample_invoice(amount_paid=Decimal("253703.50")),
            datetime.date(2025, 5, 1),
            "no balance due",
        ),
    ],
)
def test_overdue_reminder_rejects_wrong_invoice(invoice, as_of, expected):
    with pytest.raises(ValueError) as caught:
        compose.overdue_reminder(invoice, settings(), as_of)
    assert expected in str(caught.value)


def test_report_content():
    table = ReportTable(
        title="Low stock",
        columns=["SKU", "Product", "In stock", "Unit price"],
        rows=[
            ["CAB-6", "Network cable", 3, Decimal("1234.5")],
            ["SW-24", "<b>Switch</b>", 0, Decimal(250000)],
        ],
    )
    csv = Attachment("low-stock.csv", b"sku,stock\nCAB-6,3\n", "text/csv")
    message = compose.report(
        ["boss@tsh.example", "stock@tsh.example"],
        "Low stock report 5 March 2025",
        {"intro": "Two products are at or below their reorder level.",
         "summary": [("Products", 2)], "tables": [table]},
        [csv],
        settings(),
    )  # fmt: skip
    parsed = reparse(message)
    text, html = body_parts(message)

    recipients = [address.addr_spec for address in parsed["To"].addresses]
    assert recipients == ["boss@tsh.example", "stock@tsh.example"]
    assert "Two products" in text
    assert "1,234.50" in text
    assert "250,000.00" in html
    assert "&lt;b&gt;Switch&lt;/b&gt;" in html
    assert "low-stock.csv" in text
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "low-stock.csv"


def test_report_text_table_is_aligned():
    table = ReportTable("Sales", ["Day", "Total"], [["Mon", Decimal(5)]])

    lines = table.text.splitlines()
    assert lines[0] == "Day  Total"
    assert lines[2] == "Mon   5.00"


def test_report_table_rejects_short_row():
    with pytest.raises(ValueError) as caught:
        ReportTable("Sales", ["Day", "Total"], [["Mon"]])
    assert "row 1 has 1 cells" in str(caught.value)


def test_report_without_recipients_is_rejected():
    with pytest.raises(InvalidMessageError) as caught:
        compose.report([], "Daily sales", {}, [], settings())
    assert "TSHJOBS_MANAGEMENT_EMAILS" in str(caught.value)
