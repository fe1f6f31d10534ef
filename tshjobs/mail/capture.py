"""A local SMTP server that stores every message it receives as a .eml file.

The demo and the tests point tshjobs at it instead of a real mail server.
Faults can be switched on while it runs: reject the next N commands (or a
share of them) with a given reply, close each connection after N messages,
or hang by never replying. It speaks plain SMTP, STARTTLS or implicit TLS,
and can require a login.

Run it on its own with `python -m tshjobs.mail.capture --dir D --port P`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

log = logging.getLogger(__name__)

TLS_MODES = ("none", "ssl", "starttls")
FAULT_COMMANDS = ("MAIL", "RCPT", "DATA")
FAULT_SETTINGS = (
    "reject_next",
    "reject_share",
    "drop_after",
    "drop_before_reply",
    "hang",
)


@dataclass(frozen=True)
class CapturedMessage:
    """One stored message: its file and its SMTP envelope."""

    path: Path
    mail_from: str
    rcpt_tos: tuple[str, ...]


@dataclass
class _Rejection:
    command: str
    code: int
    text: str
    remaining: int | None
    share: float | None
    rng: random.Random


def make_self_signed_certificate(
    directory: Path, common_name: str = "localhost"
) -> tuple[Path, Path]:
    """Create a self-signed certificate for common_name and 127.0.0.1, valid
    for two days, with the `openssl` command; return (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate = directory / "capture-cert.pem"
    key = directory / "capture-key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-days", "2", "-subj", f"/CN={common_name}",
        "-addext", f"subjectAltName=DNS:{common_name},IP:127.0.0.1",
        "-keyout", str(key), "-out", str(certificate),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError(
            "openssl not found; install the Debian package openssl"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"openssl failed to create a certificate: {exc.stderr.decode().strip()}"
        ) from None
    return certificate, key


class _CaptureSMTP(SMTP):
    """aiosmtpd's SMTP session with the hang fault and connection tracking."""

    def __init__(self, handler, *, capture: CaptureServer, **kwargs):
        super().__init__(handler, **kwargs)
        self.capture = capture
        self.accepted_messages = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.capture._sessions.add(self)

    def connection_lost(self, error) -> None:
        self.capture._sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status) -> None:
        if self.capture.hanging:
            # Send no reply: the client sees a silent server until its own
            # timeout. The task is cancelled when the connection closes.
            await asyncio.Event().wait()
        await super().push(status)


class _Handler:
    def __init__(self, capture: CaptureServer):
        self.capture = capture

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        rejection = self.capture._take_rejection("MAIL")
        if rejection:
            return rejection
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rejection = self.capture._take_rejection("RCPT")
        if rejection:
            return rejection
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        rejection = self.capture._take_rejection("DATA")
        if rejection:
            return rejection

        stored = self.capture._store(envelope)
        server.accepted_messages += 1
        drop_after = self.capture.drop_after_messages
        if drop_after is None or server.accepted_messages < drop_after:
            return f"250 OK stored as {stored.path.name}"

        if self.capture.drop_before_reply:
            log.info(
                "closing connection from %s after storing message %d, before the reply",
                session.peer,
                server.accepted_messages,
            )
            server.transport.abort()
            # The session task is cancelled when the connection is lost; wait
            # for that instead of writing a reply to a closed transport.
            await asyncio.Event().wait()

        log.info(
            "closing connection from %s after %d message(s)",
            session.peer,
            server.accepted_messages,
        )
        # Runs after aiosmtpd has written the 250 reply below into the
        # transport, and close() sends buffered data before closing.
        asyncio.get_running_loop().call_soon(server.transport.close)
        return f"250 OK stored as {stored.path.name}"

    async def handle_QUIT(self, server, session, envelope):
        self.capture._count_quit()
        return "221 Bye"


class _Controller(Controller):
    def __init__(self, capture: CaptureServer, **kwargs):
        super().__init__(_Handler(capture), **kwargs)
        self.capture = capture

    def factory(self):
        self.capture._count_connection()
        return _CaptureSMTP(self.handler, capture=self.capture, **self.SMTP_kwargs)

    def _trigger_server(self):
        # With port 0 the system picked the port; aiosmtpd's readiness check
        # must connect to that one.
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class CaptureServer:
    """An SMTP server on a thread of its own that stores each message it
    accepts as a .eml file in `directory`.

    `tls` is "none", "ssl" (implicit TLS) or "starttls", with `certfile` and
    `keyfile` (see make_self_signed_certificate). With `users`, a mapping of
    login to password, AUTH PLAIN and LOGIN check them."""

    def __init__(
        self,
        directory: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: str = "none",
        certfile: Path | None = None,
        keyfile: Path | None = None,
        users: Mapping[str, str] | None = None,
    ):
        if tls not in TLS_MODES:
            raise ValueError(f"tls={tls!r} is invalid; allowed: {TLS_MODES}")
        if tls != "none" and (certfile is None or keyfile is None):
            raise ValueError(f"tls={tls!r} needs certfile and keyfile")

        self.directory = Path(directory)
        self.host = host
        self.requested_port = port
        self.tls = tls
        self.certfile = certfile
        self.keyfile = keyfile
        self.users = dict(users or {})

        self.hanging = False
        self.drop_after_messages: int | None = None
        self.drop_before_reply = False
        self._rejections: list[_Rejection] = []
        self._messages: list[CapturedMessage] = []
        self._connections = 0
        self._rejected = 0
        self._quits = 0
        self._sessions: set[_CaptureSMTP] = set()
        self._lock = threading.Lock()
        self._controller: _Controller | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (chosen by the system for port 0)."""
        if self._controller is None:
            raise RuntimeError("capture server is not running; call start()")
        return self._controller.port

    @property
    def message_count(self) -> int:
        with self._lock:
            return len(self._messages)

    @property
    def connection_count(self) -> int:
        """Connections accepted since start(), not counting aiosmtpd's own
        readiness check."""
        with self._lock:
            return self._connections

    @property
    def rejection_count(self) -> int:
        with self._lock:
            return self._rejected

    @property
    def quit_count(self) -> int:
        """QUIT commands received, that is connections the client closed
        properly."""
        with self._lock:
            return self._quits

    @property
    def messages(self) -> list[CapturedMessage]:
        with self._lock:
            return list(self._messages)

    def start(self) -> None:
        """Start listening, and return once aiosmtpd has read the server's
        greeting on a test connection."""
        if self._controller is not None:
            raise RuntimeError("capture server is already running")

        self.directory.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, object] = {
            "hostname": self.host,
            "port": self.requested_port,
            "auth_require_tls": False,
            "authenticator": self._authenticate if self.users else None,
        }
        if self.tls == "ssl":
            kwargs["ssl_context"] = self._server_context()
        elif self.tls == "starttls":
            kwargs["tls_context"] = self._server_context()

        controller = _Controller(self, **kwargs)
        controller.start()
        self._controller = controller
        with self._lock:
            self._connections = 0
        log.info(
            "capture server listening on %s:%d (tls %s), storing messages in %s",
            self.host,
            self.port,
            self.tls,
            self.directory,
        )

    def stop(self) -> None:
        """Close every open connection and stop listening."""
        controller = self._controller
        if controller is None:
            return

        self.hanging = False
        future = asyncio.run_coroutine_threadsafe(
            self._close_sessions(), controller.loop
        )
        future.result(timeout=10)
        controller.stop()
        self._controller = None
        log.info("capture server on %s stopped", self.host)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def reject_next(
        self, count: int, code: int, text: str, *, command: str = "DATA"
    ) -> None:
        """Reply to the next `count` MAIL, RCPT or DATA commands (DATA: at the
        end of the message data) with `code text` instead of accepting."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._add_rejection(command, code, text, remaining=count, share=None)

    def reject_share(
        self,
        share: float,
        code: int,
        text: str,
        *,
        command: str = "DATA",
        seed: int | None = None,
    ) -> None:
        """Reply to a random share (0 to 1) of the MAIL, RCPT or DATA commands
        with `code text`, until clear_faults(); `seed` makes it repeatable."""
        if not 0 <= share <= 1:
            raise ValueError(f"share must be from 0 to 1, got {share}")
        self._add_rejection(command, code, text, remaining=None, share=share, seed=seed)

    def drop_after(self, count: int | None, *, before_reply: bool = False) -> None:
        """Close each connection once it has delivered `count` messages; None
        turns this off. The server sends its 250 reply first, unless
        `before_reply`: then it stores the message and closes without a
        reply, so the client cannot know the message arrived."""
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1 or None, got {count}")
        self.drop_after_messages = count
        self.drop_before_reply = before_reply

    def hang(self, enabled: bool = True) -> None:
        """Stop replying: new connections get no greeting and open ones no
        reply, until hang(False)."""
        self.hanging = enabled

    def clear_faults(self) -> None:
        with self._lock:
            self._rejections.clear()
        self.drop_after_messages = None
        self.drop_before_reply = False
        self.hanging = False

    def apply_faults(self, config: Mapping[str, object]) -> None:
        """Replace the faults with those of a mapping such as a faults file
        contains, for example {"reject_next": {"count": 1, "code": 451, "text":
        "4.3.0 Try later", "command": "DATA"}, "reject_share": {"share": 0.5,
        "code": 550, "text": "5.7.1 Rejected", "seed": 1}, "drop_after": 3,
        "drop_before_reply": false, "hang": false}. Every key is optional."""
        if not isinstance(config, Mapping):
            raise TypeError(f"faults must be a JSON object, got {config!r}")
        unknown = set(config) - set(FAULT_SETTINGS)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")

        self.clear_faults()
        if config.get("reject_next"):
            self.reject_next(**config["reject_next"])
        if config.get("reject_share"):
            self.reject_share(**config["reject_share"])
        self.drop_after(
            config.get("drop_after"),
            before_reply=bool(config.get("drop_before_reply", False)),
        )
        self.hang(bool(config.get("hang", False)))

    def _add_rejection(self, command, code, text, *, remaining, share, seed=None):
        if command not in FAULT_COMMANDS:
            raise ValueError(
                f"command must be one of {FAULT_COMMANDS}, got {command!r}"
            )
        if not 400 <= code <= 599:
            raise ValueError(f"code must be a 4xx or 5xx reply code, got {code}")
        if "\r" in text or "\n" in text:
            raise ValueError("reply text must be one line")

        rejection = _Rejection(
            command, code, text, remaining, share, random.Random(seed)
        )
        with self._lock:
            self._rejections.append(rejection)

    def _take_rejection(self, command: str) -> str | None:
        """Return the reply for a command that a rejection fault applies to,
        or None to accept it."""
        with self._lock:
            for rejection in self._rejections:
                if rejection.command != command:
                    continue

                if rejection.remaining is not None:
                    rejection.remaining -= 1
                    if rejection.remaining == 0:
                        self._rejections.remove(rejection)
                elif rejection.rng.random() >= rejection.share:
                    continue

                self._rejected += 1
                reply = f"{rejection.code} {rejection.text}"
                log.info("rejecting %s with %s", command, reply)
                return reply
        return None

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def _count_quit(self) -> None:
        with self._lock:
            self._quits += 1

    def _store(self, envelope) -> CapturedMessage:
        """Write the message as received to a uniquely named .eml file: first
        to a hidden temporary file, then renamed, so that a reader never sees
        half a message."""
        with self._lock:
            sequence = len(self._messages) + 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{sequence:06d}-{uuid.uuid4().hex[:12]}.eml"
        path = self.directory / name
        temporary = self.directory / f".{name}.tmp"

        with open(temporary, "wb") as file:
            file.write(envelope.original_content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

        message = CapturedMessage(path, envelope.mail_from, tuple(envelope.rcpt_tos))
        with self._lock:
            self._messages.append(message)
        log.info(
            "stored message from %s to %s as %s",
            envelope.mail_from,
            ", ".join(envelope.rcpt_tos),
            path.name,
        )
        return message

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", errors="replace")
            password = auth_data.password.decode("utf-8", errors="replace")
            if login in self.users and self.users[login] == password:
                return AuthResult(success=True)
        log.info("rejected %s login from %s", mechanism, session.peer)
        return AuthResult(success=False, handled=False)

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.certfile), str(self.keyfile))
        return context

    async def _close_sessions(self) -> None:
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        # Let the transports run their connection_lost callbacks.
        await asyncio.sleep(0)
        await asyncio.sleep(0)


if __name__ == "__main__":
    from tshjobs.mail.capture_cli import main

    raise SystemExit(main())
