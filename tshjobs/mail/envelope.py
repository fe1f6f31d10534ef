"""Derive the SMTP envelope and the DATA payload of a message."""

from __future__ import annotations

import copy
import io
import re
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import getaddresses

from tshjobs.mail.headers import InvalidMessageError


@dataclass(frozen=True)
class Envelope:
    """The parts of one SMTP transaction: the MAIL FROM address, the RCPT TO
    addresses and the DATA payload (dot-stuffed, ending with `.` CRLF)."""

    message_id: str | None
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    international: bool
    eight_bit: bool


def envelope_of(message: EmailMessage) -> Envelope:
    """Take the sender from Sender or From and the recipients from To, Cc and
    Bcc, and serialise the message without its Bcc headers.

    Raises InvalidMessageError when there is no sender or no recipient."""
    senders = _addresses(message, "Sender") or _addresses(message, "From")
    if not senders:
        raise InvalidMessageError("message has no From address")

    recipients = []
    for header in ("To", "Cc", "Bcc"):
        for recipient in _addresses(message, header):
            if recipient not in recipients:
                recipients.append(recipient)
    if not recipients:
        raise InvalidMessageError("message has no recipient in To, Cc or Bcc")

    international = not all(address.isascii() for address in (senders[0], *recipients))
    outgoing = copy.copy(message)
    del outgoing["Bcc"]
    del outgoing["Resent-Bcc"]

    generator_policy = message.policy.clone(linesep="\r\n")
    if international and isinstance(generator_policy, EmailPolicy):
        generator_policy = generator_policy.clone(utf8=True)
    buffer = io.BytesIO()
    generator = BytesGenerator(buffer, mangle_from_=False, policy=generator_policy)
    generator.flatten(outgoing, linesep="\r\n")
    raw = buffer.getvalue()

    return Envelope(
        message_id=_message_id(message),
        sender=senders[0],
        recipients=tuple(recipients),
        data=data_command_payload(raw),
        international=international,
        eight_bit=not raw.isascii(),
    )


def data_command_payload(raw: bytes) -> bytes:
    """Return raw with CRLF line ends, leading dots doubled and the closing
    `.` line, as RFC 5321 section 4.5.2 requires after DATA."""
    data = re.sub(rb"\r\n|\n|\r", b"\r\n", raw)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _addresses(message: EmailMessage, header: str) -> list[str]:
    found = []
    for value in message.get_all(header, []):
        parsed = getattr(value, "addresses", None)
        if parsed is not None:
            found.extend(address.addr_spec for address in parsed if address.username)
        else:
            found.extend(spec for _, spec in getaddresses([str(value)]) if spec)
    return found


def _message_id(message: EmailMessage) -> str | None:
    value = message.get("Message-ID")
    if value is None:
        return None
    return str(value).strip()
