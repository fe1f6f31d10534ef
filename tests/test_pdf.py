"""Invoice PDFs (tshjobs.mail.pdf), read back with pypdf."""

from __future__ import annotations

import io
import logging
from decimal import Decimal

import pytest
from pypdf import PdfReader

from tests.smtp_server import ARABIC_NAME, sample_customer, sample_invoice
from tshjobs.mail import pdf as pdf_module
from tshjobs.mail.pdf import FONT_DIR, REGULAR_FONT_FILE, render_invoice_pdf

needs_dejavu = pytest.mark.skipif(
    not (FONT_DIR / REGULAR_FONT_FILE).is_file(),
    reason="DejaVu Sans missing: apt-get install fonts-dejavu-core",
)


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def font_names(data: bytes) -> set[str]:
    reader = PdfReader(io.BytesIO(data))
    names = set()
    for page in reader.pages:
        fonts = page["/Resources"]["/Font"]
        for font in fonts.values():
            names.add(str(font.get_object()["/BaseFont"]))
    return names


def test_pdf_contains_number_and_total():
    data = render_invoice_pdf(sample_invoice(), company_name="TSH")
    text = pdf_text(data)

    assert data.startswith(b"%PDF-")
    assert "INV-2025-0042" in text
    assert "253,703.50 IQD" in text
    assert "252,703.50 IQD" in text


def test_pdf_contains_dates_and_items():
    text = pdf_text(render_invoice_pdf(sample_invoice(), company_name="TSH"))

    assert "5 March 2025" in text
    assert "4 April 2025" in text
    assert "CAB-6" in text
    assert "1,234.50 IQD" in text
    assert "3,703.50 IQD" in text


@needs_dejavu
def test_pdf_embeds_dejavu_for_diacritics():
    invoice = sample_invoice(customer=sample_customer(name="Müller, Hans"))
    data = render_invoice_pdf(invoice, company_name="TSH")

    assert "Müller, Hans" in pdf_text(data)
    assert any("DejaVuSans" in name for name in font_names(data))


@needs_dejavu
def test_pdf_renders_arabic_customer_name():
    invoice = sample_invoice(customer=sample_customer(name=ARABIC_NAME))
    data = render_invoice_pdf(invoice, company_name="TSH")
    text = pdf_text(data)

    assert "INV-2025-0042" in text
    # fpdf2 maps each shaped glyph back to its characters (ToUnicode), so the
    # name extracts as written although the glyphs are joined forms.
    assert ARABIC_NAME in text


def test_pdf_without_font_falls_back_and_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(pdf_module, "_warned", set())
    invoice = sample_invoice(customer=sample_customer(name=ARABIC_NAME))

    with caplog.at_level(logging.WARNING, logger="tshjobs.mail.pdf"):
        data = render_invoice_pdf(invoice, company_name="TSH", font_dir=tmp_path)
    text = pdf_text(data)

    assert "INV-2025-0042" in text
    assert "253,703.50 IQD" in text
    assert "fonts-dejavu-core" in caplog.text
    assert not any("DejaVuSans" in name for name in font_names(data))


def test_pdf_with_many_items_spans_pages():
    items = sample_invoice().items * 40
    invoice = sample_invoice(items=items, total=Decimal("10148140.00"))
    data = render_invoice_pdf(invoice)
    reader = PdfReader(io.BytesIO(data))

    assert len(reader.pages) > 1
    assert "10,148,140.00 IQD" in pdf_text(data)


def test_pdf_without_items_still_renders():
    data = render_invoice_pdf(sample_invoice(items=[]))

    assert "No line items." in pdf_text(data)
