"""Open SMTP connections and turn SMTP failures into tshjobs errors.

`open_connection` connects with the security mode of the settings (implicit
TLS, STARTTLS or none), logs in when a username is set, and raises
SmtpTemporaryError or SmtpPermanentError with the server as `host:port`, the
reply code and the server's text. No message includes the password.
"""

from __future__ import annotations

import functools
import logging
import smtplib
import socket
import ssl

from tshjobs.errors import SmtpPermanentError, SmtpTemporaryError
from tshjobs.settings import Settings

log = logging.getLogger(__name__)

SmtpError = SmtpTemporaryError | SmtpPermanentError


class _ConnectMixin:
    """Make `connect()` record the host name for TLS certificate checks (the
    standard library sets it only in `__init__`) and close the socket when
    the greeting fails, so that no half-open socket is left behind."""

    def connect(self, host="localhost", port=0, source_address=None):
        self._host = host
        try:
            return super().connect(host, port, source_address)
        except BaseException:
            self.close()
            raise


class _PlainConnection(_ConnectMixin, smtplib.SMTP):
    pass


class _TlsConnection(_ConnectMixin, smtplib.SMTP_SSL):
    pass


@functools.cache
def _local_hostname() -> str:
    """Return the EHLO name, the host's FQDN as smtplib would use, looked up
    once per process instead of once per connection."""
    return socket.getfqdn()


def server_name(settings: Settings) -> str:
    return f"{settings.smtp_host}:{settings.smtp_port}"


def server_text(settings: Settings, text: bytes | str) -> str:
    """Decode the server's reply text for an error message, on one line, with
    the password masked in case a server echoes it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    if settings.smtp_password:
        text = text.replace(settings.smtp_password, "(password hidden)")
    return text


def reply_error(settings: Settings, command: str, code: int, text) -> SmtpError:
    """Return the error for a rejected command: SmtpPermanentError for a 5xx
    reply, SmtpTemporaryError for any other code."""
    kind = SmtpPermanentError if 500 <= code < 600 else SmtpTemporaryError
    return kind(
        f"SMTP server {server_name(settings)} rejected {command} with {code} "
        f"{server_text(settings, text)}"
    )


def is_timeout(exc: BaseException) -> bool:
    """Tell whether smtplib raised exc while handling a socket timeout (it
    turns every socket error into SMTPServerDisconnected)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TimeoutError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def make_tls_context(settings: Settings) -> ssl.SSLContext:
    """Return the client TLS context: the system's trusted certificates and
    host name checks, or no verification at all when smtp_verify_tls is
    false."""
    context = ssl.create_default_context()
    if not settings.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "TLS certificate of SMTP server %s is not verified "
            "(TSHJOBS_SMTP_VERIFY_TLS=false)",
            server_name(settings),
        )
    return context


def open_connection(
    settings: Settings, tls_context: ssl.SSLContext | None = None
) -> smtplib.SMTP:
    """Connect, say EHLO, secure the connection and log in as the settings
    ask; raise SmtpTemporaryError or SmtpPermanentError when that fails.

    settings.smtp_timeout applies to the connect and to every later command.
    A 4xx reply to the login (such as 454) is temporary and a 5xx one is
    permanent."""
    server = server_name(settings)
    try:
        connection = _open(settings, tls_context)
    except SmtpPermanentError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        command = f"the login of user {settings.smtp_username!r}"
        raise reply_error(settings, command, exc.smtp_code, exc.smtp_error) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise SmtpPermanentError(
            f"SMTP server {server} does not support what the settings ask for: {exc}"
        ) from exc
    except smtplib.SMTPResponseException as exc:
        raise reply_error(
            settings, "the connection", exc.smtp_code, exc.smtp_error
        ) from exc
    except smtplib.SMTPServerDisconnected as exc:
        if is_timeout(exc):
            raise SmtpTemporaryError(
                f"SMTP server {server} timed out: no response within "
                f"{settings.smtp_timeout:g} s while the connection was being set up"
            ) from exc
        raise SmtpTemporaryError(
            f"SMTP server {server} closed the connection while it was being set "
            f"up: {server_text(settings, str(exc))}"
        ) from exc
    except smtplib.SMTPException as exc:
        raise SmtpPermanentError(
            f"cannot log in to SMTP server {server}: {exc}"
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise SmtpPermanentError(
            f"TLS certificate of SMTP server {server} is not valid: "
            f"{exc.verify_message}; fix the certificate, or set "
            "TSHJOBS_SMTP_VERIFY_TLS=false for a server you trust"
        ) from exc
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        raise SmtpTemporaryError(
            f"TLS connection to SMTP server {server} was closed during the "
            f"handshake: {exc}"
        ) from exc
    except ssl.SSLError as exc:
        raise SmtpPermanentError(
            f"TLS handshake with SMTP server {server} failed: {exc}; check that "
            f"TSHJOBS_SMTP_SECURITY={settings.smtp_security} matches the port "
            "(ssl: 465, starttls: 587)"
        ) from exc
    except TimeoutError as exc:
        raise SmtpTemporaryError(
            f"SMTP server {server} timed out: no response within "
            f"{settings.smtp_timeout:g} s"
        ) from exc
    except OSError as exc:
        raise SmtpTemporaryError(
            f"cannot connect to SMTP server {server}: {exc}"
        ) from exc

    log.info(
        "connected to SMTP server %s (security %s%s)",
        server,
        settings.smtp_security,
        f", user {settings.smtp_username}" if settings.smtp_username else "",
    )
    return connection


def _open(settings: Settings, tls_context: ssl.SSLContext | None) -> smtplib.SMTP:
    if settings.smtp_security != "none" and tls_context is None:
        tls_context = make_tls_context(settings)

    if settings.smtp_security == "ssl":
        connection = _TlsConnection(
            local_hostname=_local_hostname(),
            timeout=settings.smtp_timeout,
            context=tls_context,
        )
    else:
        connection = _PlainConnection(
            local_hostname=_local_hostname(), timeout=settings.smtp_timeout
        )

    try:
        code, text = connection.connect(settings.smtp_host, settings.smtp_port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, text)
        connection.ehlo_or_helo_if_needed()

        if settings.smtp_security == "starttls":
            if not connection.has_extn("starttls"):
                raise SmtpPermanentError(
                    f"SMTP server {server_name(settings)} does not offer STARTTLS; "
                    "set TSHJOBS_SMTP_SECURITY to ssl or none to match it"
                )
            connection.starttls(context=tls_context)
            connection.ehlo()

        if settings.smtp_username:
            connection.login(settings.smtp_username, settings.smtp_password)
    except BaseException:
        connection.close()
        raise
    return connection
