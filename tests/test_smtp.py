"""SMTP delivery (tshjobs.mail.smtp) against real aiosmtpd capture servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from email.headerregistry import Address

import pytest

from tests.smtp_server import (
    capture_server,
    read_eml,
    sample_customer,
    sample_invoice,
    smtp_settings,
    tls_files,
    unused_port,
)
from tshjobs.errors import SmtpPermanentError, SmtpTemporaryError
from tshjobs.mail import compose
from tshjobs.mail.message import InvalidMessageError, build_message
from tshjobs.mail.smtp import SmtpSender, get_sender

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def server(tmp_path):
    with capture_server(tmp_path / "mail") as running:
        yield running


@pytest.fixture
def certificate(tmp_path):
    return tls_files(tmp_path / "tls")


def make_message(number: int = 1, **kwargs):
    values = {
        "sender": Address("TSH Sales", addr_spec="sales@tsh.example"),
        "to": [Address("Müller, Hans", addr_spec="hans@example.de")],
        "subject": f"Test message {number}",
        "text": f"Message number {number}.\n",
        "html": f"<p>Message number {number}.</p>\n",
    }
    values.update(kwargs)
    return build_message(**values)


def stored_message_ids(server) -> list[str]:
    return [str(read_eml(item.path)["Message-ID"]) for item in server.messages]


def test_send_delivers_message(server):
    message = compose.welcome(sample_customer(), smtp_settings(server.port))

    with SmtpSender(smtp_settings(server.port)) as sender:
        result = sender.send(message)

    assert result.code == 250
    assert result.recipients == ("hans.mueller@example.de",)
    assert result.sender == "sales@tsh.example"
    assert result.message_id == str(message["Message-ID"])
    (stored,) = server.messages
    assert stored.mail_from == "sales@tsh.example"
    assert stored.rcpt_tos == ("hans.mueller@example.de",)
    parsed = read_eml(stored.path)
    assert str(parsed["Message-ID"]) == str(message["Message-ID"])
    assert parsed["To"].addresses[0].display_name == "Müller, Hans"


def test_send_delivers_invoice_with_pdf(server):
    message = compose.invoice(sample_invoice(), smtp_settings(server.port))

    with SmtpSender(smtp_settings(server.port)) as sender:
        sender.send(message)

    parsed = read_eml(server.messages[0].path)
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "invoice-INV-2025-0042.pdf"
    assert attachment.get_content().startswith(b"%PDF-")


def test_many_sends_use_one_connection(server):
    messages = [make_message(number) for number in range(20)]

    with SmtpSender(smtp_settings(server.port)) as sender:
        for message in messages:
            sender.send(message)

    assert server.message_count == 20
    assert server.connection_count == 1
    assert stored_message_ids(server) == [str(m["Message-ID"]) for m in messages]


def test_close_sends_quit(server):
    sender = SmtpSender(smtp_settings(server.port))
    sender.send(make_message())
    sender.close()

    assert server.quit_count == 1
    assert not sender.connected


def test_reconnect_after_drop_between_messages(server):
    server.drop_after(1)
    messages = [make_message(number) for number in range(5)]

    # With a long idle limit no NOOP runs, so the dropped connection shows
    # when MAIL FROM fails, and the sender reconnects and sends again.
    with SmtpSender(smtp_settings(server.port), noop_after_idle=3600) as sender:
        for message in messages:
            sender.send(message)

    assert stored_message_ids(server) == [str(m["Message-ID"]) for m in messages]
    assert server.message_count == 5
    assert server.connection_count == 5


def test_reconnect_after_drop_found_by_noop(server):
    server.drop_after(2)
    messages = [make_message(number) for number in range(6)]

    with SmtpSender(smtp_settings(server.port), noop_after_idle=0) as sender:
        for message in messages:
            sender.send(message)

    assert stored_message_ids(server) == [str(m["Message-ID"]) for m in messages]
    assert server.connection_count == 3


def test_drop_before_reply_is_not_sent_twice(server):
    server.drop_after(1, before_reply=True)

    with (
        SmtpSender(smtp_settings(server.port)) as sender,
        pytest.raises(SmtpTemporaryError) as caught,
    ):
        sender.send(make_message())

    assert "may have accepted" in str(caught.value)
    assert server.message_count == 1
    assert server.connection_count == 1


def test_reconnect_after_421_before_data(server):
    server.reject_next(
        1, 421, "4.7.0 Closing connection, idle too long", command="MAIL"
    )
    message = make_message()

    with SmtpSender(smtp_settings(server.port)) as sender:
        result = sender.send(message)

    assert result.code == 250
    assert stored_message_ids(server) == [str(message["Message-ID"])]
    assert server.connection_count == 2


def test_reply_451_raises_temporary_error(server):
    server.reject_next(1, 451, "4.3.0 Mailbox temporarily unavailable")

    with (
        SmtpSender(smtp_settings(server.port)) as sender,
        pytest.raises(SmtpTemporaryError) as caught,
    ):
        sender.send(make_message())

    text = str(caught.value)
    assert f"127.0.0.1:{server.port}" in text
    assert "451" in text
    assert "4.3.0 Mailbox temporarily unavailable" in text
    assert server.message_count == 0


def test_reply_550_raises_permanent_error(server):
    server.reject_next(1, 550, "5.7.1 Message rejected as spam")

    with (
        SmtpSender(smtp_settings(server.port)) as sender,
        pytest.raises(SmtpPermanentError) as caught,
    ):
        sender.send(make_message())

    text = str(caught.value)
    assert f"127.0.0.1:{server.port}" in text
    assert "550" in text
    assert "5.7.1 Message rejected as spam" in text


def test_connection_is_reused_after_rejection(server):
    server.reject_next(1, 550, "5.7.1 Rejected")

    with SmtpSender(smtp_settings(server.port)) as sender:
        with pytest.raises(SmtpPermanentError):
            sender.send(make_message(1))
        sender.send(make_message(2))

    assert server.message_count == 1
    assert server.connection_count == 1


def test_refused_recipient_raises_and_sends_nothing(server):
    server.reject_next(1, 550, "5.1.1 No such user", command="RCPT")
    recipients = [
        Address("First", addr_spec="first@example.com"),
        Address("Second", addr_spec="second@example.com"),
    ]

    with (
        SmtpSender(smtp_settings(server.port)) as sender,
        pytest.raises(SmtpPermanentError) as caught,
    ):
        sender.send(make_message(to=recipients))

    text = str(caught.value)
    assert "first@example.com" in text
    assert "550 5.1.1 No such user" in text
    assert server.message_count == 0


def test_recipient_refused_with_4xx_is_temporary(server):
    server.reject_next(1, 450, "4.2.1 Mailbox busy", command="RCPT")

    with (
        SmtpSender(smtp_settings(server.port)) as sender,
        pytest.raises(SmtpTemporaryError) as caught,
    ):
        sender.send(make_message())

    assert "450 4.2.1 Mailbox busy" in str(caught.value)


def test_rejected_share_is_repeatable(server):
    server.reject_share(0.5, 451, "4.3.0 Try later", seed=7)
    outcomes = []

    with SmtpSender(smtp_settings(server.port)) as sender:
        for number in range(20):
            try:
                sender.send(make_message(number))
                outcomes.append("sent")
            except SmtpTemporaryError:
                outcomes.append("rejected")

    assert "sent" in outcomes
    assert "rejected" in outcomes
    assert outcomes.count("sent") == server.message_count
    assert outcomes.count("rejected") == server.rejection_count


def test_server_down_raises_temporary_error():
    port = unused_port()

    with (
        SmtpSender(smtp_settings(port)) as sender,
        pytest.raises(SmtpTemporaryError) as caught,
    ):
        sender.send(make_message())

    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text
    assert "cannot connect" in text


def test_hung_server_times_out_at_greeting(server):
    server.hang()

    with (
        SmtpSender(smtp_settings(server.port, smtp_timeout=0.5)) as sender,
        pytest.raises(SmtpTemporaryError) as caught,
    ):
        sender.send(make_message())

    text = str(caught.value)
    assert "no response within 0.5 s" in text
    assert f"127.0.0.1:{server.port}" in text


def test_server_hanging_mid_session_times_out(server):
    settings = smtp_settings(server.port, smtp_timeout=0.5)

    with SmtpSender(settings, noop_after_idle=3600) as sender:
        sender.send(make_message(1))
        server.hang()
        with pytest.raises(SmtpTemporaryError) as caught:
            sender.send(make_message(2))

    assert "no response within 0.5 s" in str(caught.value)
    assert server.message_count == 1
    assert server.connection_count == 1


def test_login_is_sent_when_username_is_set(tmp_path):
    with capture_server(tmp_path / "mail", users={"mailer": PASSWORD}) as server:
        settings = smtp_settings(
            server.port, smtp_username="mailer", smtp_password=PASSWORD
        )
        with SmtpSender(settings) as sender:
            sender.send(make_message())

        assert server.message_count == 1


def test_rejected_login_is_permanent_without_password(tmp_path):
    with capture_server(tmp_path / "mail", users={"mailer": PASSWORD}) as server:
        settings = smtp_settings(
            server.port, smtp_username="mailer", smtp_password="wrong-" + PASSWORD
        )
        with (
            SmtpSender(settings) as sender,
            pytest.raises(SmtpPermanentError) as caught,
        ):
            sender.send(make_message())

        assert server.message_count == 0

    text = str(caught.value)
    assert "535" in text
    assert "mailer" in text
    assert PASSWORD not in text
    assert PASSWORD not in repr(caught.value)


def test_starttls_mode_delivers(tmp_path, certificate):
    certfile, keyfile = certificate
    with capture_server(
        tmp_path / "mail", tls="starttls", certfile=certfile, keyfile=keyfile
    ) as server:
        settings = smtp_settings(server.port, smtp_security="starttls")
        with SmtpSender(settings) as sender:
            sender.send(make_message(1))
            sender.send(make_message(2))

        assert server.message_count == 2
        assert server.connection_count == 1


def test_ssl_mode_delivers(tmp_path, certificate):
    certfile, keyfile = certificate
    with capture_server(
        tmp_path / "mail", tls="ssl", certfile=certfile, keyfile=keyfile
    ) as server:
        settings = smtp_settings(server.port, smtp_security="ssl")
        with SmtpSender(settings) as sender:
            sender.send(make_message(1))
            sender.send(make_message(2))

        assert server.message_count == 2
        assert server.connection_count == 1


def test_self_signed_certificate_fails_verification(tmp_path, certificate):
    certfile, keyfile = certificate
    with capture_server(
        tmp_path / "mail", tls="ssl", certfile=certfile, keyfile=keyfile
    ) as server:
        settings = smtp_settings(server.port, smtp_security="ssl", smtp_verify_tls=True)
        with (
            SmtpSender(settings) as sender,
            pytest.raises(SmtpPermanentError) as caught,
        ):
            sender.send(make_message())

    assert "certificate" in str(caught.value)


def test_starttls_missing_is_permanent(server):
    settings = smtp_settings(server.port, smtp_security="starttls")

    with SmtpSender(settings) as sender, pytest.raises(SmtpPermanentError) as caught:
        sender.send(make_message())

    assert "does not offer STARTTLS" in str(caught.value)


def test_ssl_mode_against_plain_server_is_permanent(server):
    settings = smtp_settings(server.port, smtp_security="ssl")

    with SmtpSender(settings) as sender, pytest.raises(SmtpPermanentError) as caught:
        sender.send(make_message())

    assert "TLS handshake" in str(caught.value)


def test_bcc_is_delivered_but_not_shown(server):
    message = make_message()
    message["Bcc"] = "audit@tsh.example"

    with SmtpSender(smtp_settings(server.port)) as sender:
        result = sender.send(message)

    assert result.recipients == ("hans@example.de", "audit@tsh.example")
    (stored,) = server.messages
    assert stored.rcpt_tos == ("hans@example.de", "audit@tsh.example")
    assert read_eml(stored.path)["Bcc"] is None


def test_leading_dots_survive_transfer(server):
    text = "First line\n.hidden line\n..two dots\n.\nlast\n"
    message = make_message(text=text)

    with SmtpSender(smtp_settings(server.port)) as sender:
        sender.send(message)

    parsed = read_eml(server.messages[0].path)
    received = parsed.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert received == text


def test_message_without_recipient_is_rejected(server):
    message = make_message()
    del message["To"]

    with (
        SmtpSender(smtp_settings(server.port)) as sender,
        pytest.raises(InvalidMessageError),
    ):
        sender.send(message)

    assert server.connection_count == 0


def test_get_sender_is_per_thread(server):
    settings = smtp_settings(server.port)
    first = get_sender(settings)
    second = get_sender(settings)
    other_thread = []
    worker = threading.Thread(target=lambda: other_thread.append(get_sender(settings)))
    worker.start()
    worker.join()

    assert first is second
    assert other_thread[0] is not first
    assert get_sender(smtp_settings(server.port, company_name="Other")) is not first
    first.close()
    other_thread[0].close()


def test_stored_files_are_unique_and_complete(server):
    with SmtpSender(smtp_settings(server.port)) as sender:
        for number in range(5):
            sender.send(make_message(number))

    names = sorted(path.name for path in server.directory.iterdir())
    assert len(names) == 5
    assert all(name.endswith(".eml") for name in names)
    assert not any(name.startswith(".") for name in names)


def test_apply_faults_rejects_unknown_setting(server):
    with pytest.raises(ValueError) as caught:
        server.apply_faults({"explode": True})
    assert "explode" in str(caught.value)


def test_capture_command_stores_messages(tmp_path):
    port = unused_port()
    directory = tmp_path / "cli-mail"
    command = [
        sys.executable, "-m", "tshjobs.mail.capture",
        "--dir", str(directory), "--port", str(port),
    ]  # fmt: skip
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            first_line = process.stdout.readline()
            assert "listening on 127.0.0.1" in first_line

            with SmtpSender(smtp_settings(port)) as sender:
                sender.send(make_message())
        finally:
            process.terminate()
            process.wait(timeout=10)

    assert process.returncode == 0
    assert len(list(directory.glob("*.eml"))) == 1
