"""Build outgoing email messages on the standard library's `email` package.

`build_message` returns a multipart/alternative message (multipart/mixed when
there are attachments) with the text/plain and text/html parts exactly as
rendered, a unique Message-ID and a Date. Every header value is checked for
line breaks before it is set, and non-ASCII subjects and display names are
encoded by `tshjobs.mail.headers`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from tshjobs.mail.headers import (
    InvalidMessageError,
    check_header_text,
    encode_unstructured,
    format_address_list,
    needs_encoding,
)

log = logging.getLogger(__name__)

# SMTP line endings and 7-bit output. refold_source="none" keeps the generator
# from refolding the header values that tshjobs.mail.headers already folded.
MESSAGE_POLICY = policy.SMTP.clone(refold_source="none")

_MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
)

__all__ = [
    "MESSAGE_POLICY",
    "Attachment",
    "InvalidMessageError",
    "build_message",
    "parse_address",
]


@dataclass(frozen=True)
class Attachment:
    """A file attached to a message: the file name shown to the recipient,
    the content and the MIME type such as `application/pdf`."""

    filename: str
    content: bytes
    mime_type: str

    def __post_init__(self) -> None:
        if not isinstance(self.filename, str) or not self.filename.strip():
            raise InvalidMessageError(
                f"attachment file name is missing (got {self.filename!r}); "
                "give every attachment a name such as 'report.csv'"
            )

        check_header_text(self.filename, "attachment file name")
        if "/" in self.filename or "\\" in self.filename:
            raise InvalidMessageError(
                f"attachment file name {self.filename!r} contains a path "
                "separator; give the bare file name"
            )

        if not isinstance(self.mime_type, str) or not _MIME_TYPE.fullmatch(
            self.mime_type
        ):
            raise InvalidMessageError(
                f"attachment {self.filename!r} has an invalid MIME type "
                f"{self.mime_type!r}; expected type/subtype such as "
                "'application/pdf'"
            )

        if not isinstance(self.content, (bytes, bytearray, memoryview)):
            raise InvalidMessageError(
                f"attachment {self.filename!r} content must be bytes, got "
                f"{type(self.content).__name__}"
            )
        object.__setattr__(self, "content", bytes(self.content))


def parse_address(addr_spec: str, display_name: str = "") -> Address:
    """Parse one email address such as `name@example.com` into an Address.

    A non-ASCII domain is converted to its IDNA (punycode) form. Raises
    InvalidMessageError when the text is not exactly one address with a local
    part and a domain, or has an ASCII-incompatible local part, which would
    need SMTPUTF8."""
    check_header_text(display_name, "display name")
    if not isinstance(addr_spec, str) or not addr_spec.strip():
        raise InvalidMessageError("email address is missing")

    text = addr_spec.strip()
    check_header_text(text, "email address")
    if any(char.isspace() for char in text) or "<" in text or ">" in text:
        raise InvalidMessageError(
            f"{text!r} is not one email address such as name@example.com"
        )

    local_part, at, domain = text.rpartition("@")
    if not at or not local_part or not domain:
        raise InvalidMessageError(
            f"{text!r} is not an email address such as name@example.com"
        )

    if not local_part.isascii():
        raise InvalidMessageError(
            f"{text!r} has a non-ASCII local part, which needs SMTPUTF8; "
            "tshjobs sends ASCII addresses only"
        )

    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidMessageError(f"{text!r} has an invalid domain") from None

    try:
        return Address(display_name, addr_spec=f"{local_part}@{ascii_domain}")
    except (ValueError, IndexError) as exc:
        raise InvalidMessageError(
            f"{text!r} is not a valid email address: {exc}"
        ) from None


def build_message(
    *,
    sender: Address,
    to: Sequence[Address],
    subject: str,
    text: str,
    html: str,
    attachments: Sequence[Attachment] = (),
    cc: Sequence[Address] = (),
    reply_to: Address | None = None,
) -> EmailMessage:
    """Build a message with a text/plain and a text/html alternative, then the
    attachments.

    Both bodies are stored as given: no tags are added to the text and no
    line breaks are turned into `<br>`. Raises InvalidMessageError on a
    missing recipient, a line break in a header value or an invalid address."""
    if not to:
        raise InvalidMessageError("message has no recipient in To")
    if not subject or not subject.strip():
        raise InvalidMessageError("message subject is empty")

    check_header_text(subject, "subject")
    addresses = [sender, *to, *cc]
    if reply_to is not None:
        addresses.append(reply_to)
    for address in addresses:
        _check_address(address)

    message = EmailMessage(policy=MESSAGE_POLICY)
    message.set_raw("From", format_address_list("From", [sender]))
    message.set_raw("To", format_address_list("To", list(to)))
    if cc:
        message.set_raw("Cc", format_address_list("Cc", list(cc)))
    if reply_to is not None:
        message.set_raw("Reply-To", format_address_list("Reply-To", [reply_to]))

    if needs_encoding(subject):
        message.set_raw("Subject", encode_unstructured("Subject", subject))
    else:
        message["Subject"] = subject

    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.domain or None)
    # RFC 3834: auto-responders (out-of-office replies) must not reply to it.
    message["Auto-Submitted"] = "auto-generated"

    message.set_content(text, subtype="plain", cte=_transfer_encoding(text))
    message.add_alternative(html, subtype="html", cte=_transfer_encoding(html))

    for attachment in attachments:
        _attach(message, attachment)

    log.debug(
        "built message %s with %d attachment(s)",
        message["Message-ID"],
        len(attachments),
    )
    return message


def _check_address(address: Address) -> None:
    if not isinstance(address, Address):
        raise InvalidMessageError(
            f"expected an email.headerregistry.Address, got {address!r}"
        )

    check_header_text(address.display_name, "display name")
    if not address.username or not address.domain:
        raise InvalidMessageError(
            f"address {address.addr_spec!r} needs a local part and a domain"
        )
    if not address.addr_spec.isascii():
        raise InvalidMessageError(
            f"address {address.addr_spec!r} is not ASCII; use parse_address() "
            "to convert an international domain"
        )


def _transfer_encoding(body: str) -> str | None:
    """Choose quoted-printable for non-ASCII bodies so that the message stays
    7-bit clean; the policy's default would send 8bit, which needs the
    server's 8BITMIME."""
    if body.isascii():
        return None
    return "quoted-printable"


def _attach(message: EmailMessage, attachment: Attachment) -> None:
    maintype, _, subtype = attachment.mime_type.partition("/")
    # The name is given twice: RFC 2183 filename= for current readers and the
    # older Content-Type name= that some clients still read. Non-ASCII names
    # are encoded per RFC 2231 (filename*=utf-8''...) by the email package.
    message.add_attachment(
        attachment.content,
        maintype=maintype.lower(),
        subtype=subtype.lower(),
        filename=attachment.filename,
        params={"name": attachment.filename},
    )
