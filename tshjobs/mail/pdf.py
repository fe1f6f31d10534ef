"""Render an invoice as a one-document A4 PDF with fpdf2.

Customer and item names may be Arabic or carry diacritics, so the PDF embeds
DejaVu Sans (Debian package fonts-dejavu-core), which has Arabic glyphs.
Arabic letters are joined and ordered right to left by fpdf2's text shaping,
which needs the uharfbuzz package. Without the font the PDF falls back to the
built-in Helvetica, which covers Latin-1 only, and logs a warning.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from tshjobs.erp.models import Invoice
from tshjobs.mail.render import format_date, format_money

log = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
REGULAR_FONT_FILE = "DejaVuSans.ttf"
BOLD_FONT_FILE = "DejaVuSans-Bold.ttf"

_UNICODE_FAMILY = "DejaVuSans"
_FALLBACK_FAMILY = "helvetica"

# Millimetres on A4 (210 mm wide) with fpdf2's default 10 mm margins.
_ITEM_COLUMN_WIDTHS = (26, 72, 14, 39, 39)
_ITEM_ALIGNMENTS = ("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT")
_LABEL_WIDTH = 32

# Warnings already logged, so that a missing font or shaping package is
# reported once per process and not on every invoice.
_warned: set[str] = set()


def render_invoice_pdf(
    invoice: Invoice, *, company_name: str = "", font_dir: Path = FONT_DIR
) -> bytes:
    """Render the invoice (number, dates, customer, line items, totals) and
    return the PDF file's bytes."""
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(f"Invoice {invoice.invoice_number}")
    pdf.set_creator("tshjobs")
    if company_name:
        pdf.set_author(company_name)

    family = _load_fonts(pdf, font_dir)
    if family == _UNICODE_FAMILY:
        clean = _keep
    else:
        clean = _latin1
    pdf.add_page()

    _write_heading(pdf, family, clean, invoice, company_name)
    _write_customer(pdf, family, clean, invoice)
    _write_items(pdf, family, clean, invoice)
    _write_totals(pdf, family, clean, invoice)

    pdf.ln(8)
    pdf.set_font(family, "", 9)
    pdf.multi_cell(
        0,
        5,
        clean(
            f"Please quote invoice number {invoice.invoice_number} with your payment."
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    return bytes(pdf.output())


def _load_fonts(pdf: FPDF, font_dir: Path) -> str:
    """Add DejaVu Sans to the document and turn on text shaping. Return the
    font family to use: Helvetica when the font files are missing."""
    regular = font_dir / REGULAR_FONT_FILE
    bold = font_dir / BOLD_FONT_FILE
    if not regular.is_file() or not bold.is_file():
        _warn_once(
            f"font:{font_dir}",
            "invoice PDF font %s or %s not found; using Helvetica, which "
            "cannot show Arabic (install the Debian package fonts-dejavu-core)",
            regular,
            bold,
        )
        return _FALLBACK_FAMILY

    pdf.add_font(_UNICODE_FAMILY, "", str(regular))
    pdf.add_font(_UNICODE_FAMILY, "B", str(bold))

    if importlib.util.find_spec("uharfbuzz") is None:
        _warn_once(
            "shaping",
            "uharfbuzz is not installed, so Arabic text in invoice PDFs is "
            "not joined or ordered right to left (pip install uharfbuzz)",
        )
    else:
        pdf.set_text_shaping(use_shaping_engine=True)
    return _UNICODE_FAMILY


def _warn_once(key: str, message: str, *args: object) -> None:
    if key in _warned:
        return
    _warned.add(key)
    log.warning(message, *args)


def _keep(text: str) -> str:
    return text


def _latin1(text: str) -> str:
    """Replace the characters the built-in Helvetica cannot show with `?`."""
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _write_heading(pdf, family, clean, invoice: Invoice, company_name: str):
    pdf.set_font(family, "B", 16)
    pdf.cell(120, 9, clean(company_name), new_x="RIGHT", new_y="TOP")
    pdf.cell(0, 9, "INVOICE", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)

    rows = [
        ("Invoice number", invoice.invoice_number),
        ("Issue date", format_date(invoice.issue_date)),
        ("Due date", format_date(invoice.due_date)),
        ("Status", invoice.status),
    ]
    for label, value in rows:
        pdf.set_font(family, "", 10)
        pdf.cell(_LABEL_WIDTH, 6, label, new_x="RIGHT", new_y="TOP")
        pdf.set_font(family, "B", 10)
        pdf.cell(0, 6, clean(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)


def _write_customer(pdf, family, clean, invoice: Invoice):
    customer = invoice.customer
    pdf.set_font(family, "B", 11)
    pdf.cell(0, 7, "Bill to", new_x="LMARGIN", new_y="NEXT")

    pdf.set_font(family, "", 10)
    lines = [customer.name, customer.email or "", customer.phone or ""]
    for line in lines:
        if line:
            pdf.multi_cell(0, 6, clean(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)


def _write_items(pdf, family, clean, invoice: Invoice):
    currency = invoice.currency
    pdf.set_font(family, "", 9)
    headings = FontFace(emphasis="BOLD", fill_color=(238, 242, 247))
    with pdf.table(
        col_widths=_ITEM_COLUMN_WIDTHS,
        text_align=_ITEM_ALIGNMENTS,
        headings_style=headings,
        line_height=6,
    ) as table:
        heading = table.row()
        for title in ("SKU", "Item", "Qty", "Unit price", "Amount"):
            heading.cell(title)

        for item in invoice.items:
            row = table.row()
            row.cell(clean(item.sku))
            row.cell(clean(item.name))
            row.cell(str(item.quantity))
            row.cell(format_money(item.unit_price, currency))
            row.cell(format_money(item.amount, currency))

        if not invoice.items:
            row = table.row()
            row.cell("No line items.", colspan=5)
    pdf.ln(4)


def _write_totals(pdf, family, clean, invoice: Invoice):
    currency = invoice.currency
    rows = [("Total", invoice.total)]
    if invoice.amount_paid:
        rows.append(("Paid", invoice.amount_paid))
        rows.append(("Balance due", invoice.balance))

    label_x = pdf.l_margin + sum(_ITEM_COLUMN_WIDTHS[:3])
    for index, (label, amount) in enumerate(rows):
        last = index == len(rows) - 1
        pdf.set_font(family, "B" if last else "", 11 if last else 10)
        pdf.set_x(label_x)
        pdf.cell(_ITEM_COLUMN_WIDTHS[3], 7, label, align="R", new_x="RIGHT")
        pdf.cell(
            _ITEM_COLUMN_WIDTHS[4],
            7,
            clean(format_money(amount, currency)),
            align="R",
            new_x="LMARGIN",
            new_y="NEXT",
        )
