"""The mail layer: compose, render and send the emails of tshjobs.

`compose` builds one EmailMessage per email kind from the ERP rows,
`smtp.get_sender(settings).send(message)` sends it, and `capture` is a local
SMTP server for the demo and the tests (imported on its own, as it needs
aiosmtpd).
"""

from tshjobs.mail.message import Attachment, InvalidMessageError, build_message
from tshjobs.mail.smtp import SendResult, SmtpSender, close_senders, get_sender

__all__ = [
    "Attachment",
    "InvalidMessageError",
    "SendResult",
    "SmtpSender",
    "build_message",
    "close_senders",
    "get_sender",
]
