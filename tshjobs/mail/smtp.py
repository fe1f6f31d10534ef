"""Send messages over SMTP, reusing one open connection per sender.

`SmtpSender` connects on the first send, keeps the connection for the next
ones and closes it with QUIT on `close()`. A connection idle for more than a
few seconds is checked with NOOP before it is used. When the server drops the
connection before the message data is complete, the sender reconnects once
and sends again. After that point it cannot know whether the server accepted
the message, so it raises instead of risking a duplicate.

Every failure raises an error of `tshjobs.errors`: SmtpTemporaryError for
4xx replies, dropped connections, timeouts and refused connections, and
SmtpPermanentError for 5xx replies and rejected logins. `send()` never
returns a failure: it returns the server's reply or raises. Worker threads
get their own sender from `get_sender()`.
"""

from __future__ import annotations

import atexit
import logging
import os
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Self

from tshjobs.errors import SmtpPermanentError, SmtpTemporaryError
from tshjobs.mail.connection import (
    is_timeout,
    make_tls_context,
    open_connection,
    reply_error,
    server_name,
    server_text,
)
from tshjobs.mail.envelope import Envelope, envelope_of
from tshjobs.settings import Settings

log = logging.getLogger(__name__)

# A connection unused for longer than this is checked with NOOP before a send.
NOOP_AFTER_IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class SendResult:
    """The server's final reply to a message it accepted for every
    recipient."""

    message_id: str | None
    sender: str
    recipients: tuple[str, ...]
    code: int
    reply: str


class _ConnectionDropped(Exception):
    """The connection broke during a transaction; internal to this module."""

    def __init__(self, detail: str, *, data_sent: bool, timed_out: bool):
        super().__init__(detail)
        self.detail = detail
        self.data_sent = data_sent
        self.timed_out = timed_out


class SmtpSender:
    """Send messages through the server of `settings`, over one connection
    that stays open between sends. Sends from several threads are serialised
    by a lock; `get_sender` gives each worker thread a sender of its own."""

    def __init__(
        self, settings: Settings, *, noop_after_idle: float = NOOP_AFTER_IDLE_SECONDS
    ):
        self.settings = settings
        self.noop_after_idle = noop_after_idle
        self.pid = os.getpid()
        self._connection: smtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None

    @property
    def server(self) -> str:
        """The server as `host:port`, as error messages show it."""
        return server_name(self.settings)

    @property
    def connected(self) -> bool:
        """Whether a connection is open (the server may have dropped it since
        the last command)."""
        return self._connection is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(
        self, message: EmailMessage, before_data: Callable[[], None] | None = None
    ) -> SendResult:
        """Send a message to every address in its To, Cc and Bcc headers, and
        return the server's reply.

        `before_data` is called once the server is ready for the message
        data (it replied 354) and before they are sent. From then on the
        server may store the message. If it raises, the connection is closed
        and the server stores nothing.

        Raises SmtpTemporaryError or SmtpPermanentError when the server did not
        accept the message for every recipient: one rejected recipient means
        the message goes to no one. An SmtpTemporaryError with
        `maybe_delivered` set means the connection broke after the data were
        sent. Raises InvalidMessageError when the message has no From address
        or no recipient."""
        envelope = envelope_of(message)
        with self._lock:
            try:
                return self._send_with_reconnect(envelope, before_data)
            finally:
                self._last_used = time.monotonic()

    def close(self) -> None:
        """Close the connection with QUIT; the next send opens a new one."""
        with self._lock:
            connection = self._connection
            self._connection = None
            if connection is None:
                return

            try:
                connection.quit()
            except (smtplib.SMTPException, OSError) as exc:
                log.info("QUIT to SMTP server %s failed: %s", self.server, exc)
                connection.close()
            else:
                log.info("closed connection to SMTP server %s", self.server)

    def abandon(self) -> None:
        """Close the socket without QUIT. Used for a connection that broke,
        and in a forked process, which must not talk on its parent's
        connection."""
        connection = self._connection
        self._connection = None
        if connection is not None:
            connection.close()

    def _send_with_reconnect(self, envelope: Envelope, before_data) -> SendResult:
        connection = self._usable_connection()
        try:
            result = self._transact(connection, envelope, before_data)
        except _ConnectionDropped as drop:
            self.abandon()
            if drop.data_sent or drop.timed_out:
                raise self._dropped_error(drop, envelope) from drop

            log.warning(
                "connection to SMTP server %s was lost before message %s was "
                "sent (%s); reconnecting to send it again",
                self.server,
                envelope.message_id,
                drop.detail,
            )
            connection = self._connect()
            try:
                result = self._transact(connection, envelope, before_data)
            except _ConnectionDropped as second_drop:
                self.abandon()
                raise self._dropped_error(second_drop, envelope) from second_drop

        log.info(
            "sent message %s to %d recipient(s) via %s: %d %s",
            envelope.message_id,
            len(envelope.recipients),
            self.server,
            result.code,
            result.reply,
        )
        return result

    def _usable_connection(self) -> smtplib.SMTP:
        connection = self._connection
        if connection is None:
            return self._connect()

        idle = time.monotonic() - self._last_used
        if idle <= self.noop_after_idle:
            return connection

        try:
            code, _ = connection.noop()
        except (smtplib.SMTPException, OSError) as exc:
            code, problem = None, str(exc)
        else:
            problem = f"NOOP answered {code}"
        if code == 250:
            return connection

        log.info(
            "connection to SMTP server %s was idle for %.0f s and is no longer "
            "usable (%s); reconnecting",
            self.server,
            idle,
            problem,
        )
        self.abandon()
        return self._connect()

    def _connect(self) -> smtplib.SMTP:
        if self.settings.smtp_security != "none" and self._tls_context is None:
            self._tls_context = make_tls_context(self.settings)
        self._connection = open_connection(self.settings, self._tls_context)
        return self._connection

    def _transact(
        self, connection: smtplib.SMTP, envelope: Envelope, before_data=None
    ) -> SendResult:
        """Run MAIL, RCPT and DATA once. Raises _ConnectionDropped when the
        connection breaks, and an SmtpError when the server rejects."""
        data_sent = False
        try:
            options = self._mail_options(connection, envelope)
            code, text = connection.mail(envelope.sender, options)
            if code != 250:
                command = f"MAIL FROM:<{envelope.sender}>"
                self._reject(connection, command, code, text, before_data=True)

            rejected = []
            for recipient in envelope.recipients:
                code, text = connection.rcpt(recipient)
                if code == 421:
                    self._reject(connection, "RCPT TO", code, text, before_data=True)
                if code not in (250, 251):
                    rejected.append((recipient, code, text))
            if rejected:
                self._reject_recipients(connection, rejected)

            code, text = connection.docmd("DATA")
            if code != 354:
                self._reject(connection, "DATA", code, text, before_data=True)

            if before_data is not None:
                try:
                    before_data()
                except BaseException:
                    # Mid-transaction, only closing the connection makes
                    # the server discard the message.
                    self.abandon()
                    raise

            connection.send(envelope.data)
            data_sent = True
            code, text = connection.getreply()
            if code != 250:
                self._reject(
                    connection, "the message data", code, text, before_data=False
                )
        except smtplib.SMTPServerDisconnected as exc:
            raise _ConnectionDropped(
                server_text(self.settings, str(exc)),
                data_sent=data_sent,
                timed_out=is_timeout(exc),
            ) from exc
        except smtplib.SMTPResponseException as exc:
            self.abandon()
            raise reply_error(
                self.settings, "a command", exc.smtp_code, exc.smtp_error
            ) from exc

        return SendResult(
            message_id=envelope.message_id,
            sender=envelope.sender,
            recipients=envelope.recipients,
            code=code,
            reply=server_text(self.settings, text),
        )

    def _mail_options(self, connection: smtplib.SMTP, envelope: Envelope):
        options = []
        if envelope.international:
            if not connection.has_extn("smtputf8"):
                raise SmtpPermanentError(
                    f"message {envelope.message_id} has a non-ASCII address but "
                    f"SMTP server {self.server} does not offer SMTPUTF8"
                )
            options.append("SMTPUTF8")

        if envelope.eight_bit or envelope.international:
            if not connection.has_extn("8bitmime"):
                raise SmtpPermanentError(
                    f"message {envelope.message_id} contains 8-bit data but "
                    f"SMTP server {self.server} does not offer 8BITMIME"
                )
            options.append("BODY=8BITMIME")

        if connection.has_extn("size"):
            limit_text = connection.esmtp_features.get("size", "")
            limit = int(limit_text) if limit_text.isdigit() else 0
            if limit and len(envelope.data) > limit:
                raise SmtpPermanentError(
                    f"message {envelope.message_id} is {len(envelope.data)} bytes, "
                    f"more than the {limit} bytes SMTP server {self.server} accepts"
                )
            options.append(f"SIZE={len(envelope.data)}")
        return options

    def _reject(
        self, connection, command: str, code: int, text: bytes, *, before_data: bool
    ):
        """Raise the error for a rejected command, after resetting the
        transaction so that the connection can carry the next message.

        A 421 reply means the server is closing the connection. Before the
        message data it is handled like a dropped connection, so the message
        is sent again on a new one."""
        error = reply_error(self.settings, command, code, text)
        if code == 421:
            self.abandon()
            if before_data:
                raise smtplib.SMTPServerDisconnected(
                    f"server replied to {command} with {code} "
                    f"{server_text(self.settings, text)}"
                )
            raise error

        try:
            connection.rset()
        except (smtplib.SMTPException, OSError) as exc:
            log.info(
                "RSET to SMTP server %s failed (%s); reconnecting", self.server, exc
            )
            self.abandon()
        raise error

    def _reject_recipients(self, connection, rejected) -> None:
        listed = ", ".join(
            f"{recipient} ({code} {server_text(self.settings, text)})"
            for recipient, code, text in rejected
        )
        permanent = any(code >= 500 for _, code, _ in rejected)
        try:
            connection.rset()
        except (smtplib.SMTPException, OSError) as exc:
            log.info(
                "RSET to SMTP server %s failed (%s); reconnecting", self.server, exc
            )
            self.abandon()

        kind = SmtpPermanentError if permanent else SmtpTemporaryError
        raise kind(
            f"SMTP server {self.server} rejected {len(rejected)} recipient(s): "
            f"{listed}; the message was not sent to anyone"
        )

    def _dropped_error(self, drop: _ConnectionDropped, envelope: Envelope):
        message_id = envelope.message_id
        if drop.timed_out:
            timeout = (
                f"SMTP server {self.server} timed out: no response within "
                f"{self.settings.smtp_timeout:g} s"
            )
            if drop.data_sent:
                return SmtpTemporaryError(
                    f"{timeout} after the data of message {message_id} was sent; "
                    "the server may have accepted it",
                    maybe_delivered=True,
                )
            return SmtpTemporaryError(f"{timeout}; message {message_id} was not sent")

        if drop.data_sent:
            return SmtpTemporaryError(
                f"connection to SMTP server {self.server} was lost after the data "
                f"of message {message_id} was sent and before the server's reply "
                f"({drop.detail}); the server may have accepted it",
                maybe_delivered=True,
            )
        return SmtpTemporaryError(
            f"connection to SMTP server {self.server} was lost before message "
            f"{message_id} was sent ({drop.detail})"
        )


_thread_senders = threading.local()
_registry_lock = threading.Lock()
_senders: set[SmtpSender] = set()


def get_sender(settings: Settings) -> SmtpSender:
    """Return this thread's sender for settings, creating it on first use.

    A sender made in another process (before a fork) or for other settings
    is replaced."""
    sender: SmtpSender | None = getattr(_thread_senders, "sender", None)
    if sender is not None:
        if sender.pid != os.getpid():
            sender.abandon()
            sender = None
        elif sender.settings != settings:
            sender.close()
            sender = None

    if sender is None:
        sender = SmtpSender(settings)
        _thread_senders.sender = sender
        with _registry_lock:
            _senders.add(sender)
    return sender


def close_senders() -> None:
    """Close the connection of every sender `get_sender` made in this
    process, with QUIT. Called at exit, and by a consumer when it stops."""
    with _registry_lock:
        senders = [sender for sender in _senders if sender.pid == os.getpid()]
    for sender in senders:
        sender.close()


atexit.register(close_senders)
