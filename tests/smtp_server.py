"""Helpers for the mail tests: capture servers, settings and sample ERP rows.

The servers are real aiosmtpd servers on 127.0.0.1 (tshjobs.mail.capture),
each on a port the system picks, so that tests never wait for a fixed port.
"""

from __future__ import annotations

import contextlib
import datetime
import email
from collections.abc import Iterator
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from pathlib import Path

from tests.services import free_port
from tshjobs.erp.models import Customer, Invoice, LineItem, Order, Payment
from tshjobs.mail.capture import CaptureServer, make_self_signed_certificate
from tshjobs.settings import Settings

ARABIC_NAME = "شركة النور للتجارة العامة والمقاولات المحدودة"
SHORT_ARABIC_NAME = "علي حسن"


@contextlib.contextmanager
def capture_server(directory: Path, **kwargs) -> Iterator[CaptureServer]:
    """Run a CaptureServer storing into directory for the with block."""
    server = CaptureServer(directory, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tls_files(directory: Path) -> tuple[Path, Path]:
    """Create a self-signed certificate and key for 127.0.0.1 with openssl."""
    return make_self_signed_certificate(directory)


def smtp_settings(port: int, **overrides) -> Settings:
    """Return settings that send to 127.0.0.1:port without TLS or login, with
    a short timeout so that failing tests end quickly."""
    values = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "smtp_timeout": 5.0,
        "smtp_verify_tls": False,
        "mail_from": "TSH Sales <sales@tsh.example>",
        "company_name": "TSH",
    }
    values.update(overrides)
    return Settings(**values)


def unused_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on when this returns."""
    return free_port()


def read_eml(path: Path) -> EmailMessage:
    """Parse a stored .eml file with the modern email policy."""
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


def reparse(message: EmailMessage) -> EmailMessage:
    """Serialise a message as it would be sent and parse it back."""
    return email.message_from_bytes(message.as_bytes(), policy=policy.default)


def sample_customer(**overrides) -> Customer:
    values = {
        "id": 17,
        "name": "Müller, Hans",
        "email": "hans.mueller@example.de",
        "phone": "+964 770 123 4567",
    }
    values.update(overrides)
    return Customer(**values)


def sample_items() -> list[LineItem]:
    return [
        LineItem(1, "CAB-6", "Network cable Cat6, 3 m", 3, Decimal("1234.50")),
        LineItem(2, "SW-24", "كابل شبكة — Switch 24 ports", 1, Decimal("250000.00")),
    ]


def sample_order(**overrides) -> Order:
    values = {
        "id": 501,
        "order_number": "SO-2025-0501",
        "order_date": datetime.date(2025, 3, 5),
        "status": "confirmed",
        "total": Decimal("253703.50"),
        "currency": "IQD",
        "customer": sample_customer(),
        "items": sample_items(),
    }
    values.update(overrides)
    return Order(**values)


def sample_invoice(**overrides) -> Invoice:
    values = {
        "id": 42,
        "invoice_number": "INV-2025-0042",
        "issue_date": datetime.date(2025, 3, 5),
        "due_date": datetime.date(2025, 4, 4),
        "total": Decimal("253703.50"),
        "amount_paid": Decimal("1000.00"),
        "status": "sent",
        "currency": "IQD",
        "customer": sample_customer(),
        "order_id": 501,
        "items": sample_items(),
    }
    values.update(overrides)
    return Invoice(**values)


def sample_payment(**overrides) -> Payment:
    values = {
        "id": 9,
        "payment_number": "PAY-2025-0009",
        "payment_date": datetime.date(2025, 3, 20),
        "amount": Decimal("1000.00"),
        "method": "bank transfer",
        "reference": "TRX-778899",
        "customer": sample_customer(),
        "invoice": sample_invoice(),
    }
    values.update(overrides)
    return Payment(**values)
