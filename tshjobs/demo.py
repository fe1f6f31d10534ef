"""`tshjobs demo`: the whole appliance on embedded defaults, on one machine.

It runs a SQLite queue, a seeded SQLite ERP, a local SMTP server that stores
every message as a .eml file, the local Zoho Books sandbox, a consumer, and
the dashboard on 127.0.0.1. A simulated ERP then plays a day of activity
(orders, invoices, payments, some customers without email, some SMTP
failures) through the same task calls the real ERP makes: each event sends
its email and syncs its records to the sandbox, at Zoho's 100 calls a
minute.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from tshjobs.errors import TshjobsError
from tshjobs.logconfig import configure_logging

logger = logging.getLogger(__name__)


class DemoError(TshjobsError):
    """Raised when the demo cannot start: its data directory is in use or
    its port is taken."""


# Share of SMTP deliveries the demo's mail server refuses with 451, so that
# retries show up in the dashboard.
TEMPORARY_FAILURE_SHARE = 0.05


def _secret_key(data_dir: Path) -> str:
    path = data_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def demo_environment(
    data_dir: Path, smtp_port: int, port: int, zoho=None
) -> dict[str, str]:
    """Return the TSHJOBS_* settings of the demo's processes; `zoho` is the
    running SandboxServer, if any."""
    return {
        **(_zoho_environment(zoho) if zoho is not None else {}),
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_DATA_DIR": str(data_dir),
        "TSHJOBS_SECRET_KEY": _secret_key(data_dir),
        "TSHJOBS_REDIS_URL": "",
        "TSHJOBS_ERP_DATABASE_URL": f"sqlite:///{data_dir / 'erp.db'}",
        "TSHJOBS_SMTP_HOST": "127.0.0.1",
        "TSHJOBS_SMTP_PORT": str(smtp_port),
        "TSHJOBS_SMTP_SECURITY": "none",
        "TSHJOBS_MAIL_FROM": "TSH Demo <no-reply@tsh.example>",
        "TSHJOBS_DASHBOARD_BIND": f"127.0.0.1:{port}",
        "TSHJOBS_RETRY_DELAYS": "5,10,20",
        "TSHJOBS_WORKERS": "4",
    }


def _zoho_environment(zoho) -> dict[str, str]:
    config = zoho.config
    return {
        "TSHJOBS_ZOHO_ACCOUNTS_URL": zoho.url,
        "TSHJOBS_ZOHO_CLIENT_ID": config.client_id,
        "TSHJOBS_ZOHO_CLIENT_SECRET": config.client_secret,
        "TSHJOBS_ZOHO_REFRESH_TOKEN": config.refresh_token,
        "TSHJOBS_ZOHO_ORGANIZATION_ID": config.organization_id,
        "TSHJOBS_ZOHO_PLAN": "premium",
        "TSHJOBS_ZOHO_RETRY_DELAYS": "10,20,40",
    }


def _start_zoho_sandbox(data_dir: Path):
    """Start the Zoho Books sandbox, keeping its records in the data directory
    across demo runs; return it."""
    from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer

    config = SandboxConfig(state_path=data_dir / "zoho-sandbox.db", daily_limit=10_000)
    return SandboxServer(config, host="127.0.0.1", port=0).start()


def _write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write the demo's settings where `tshjobs` commands can read them with
    TSHJOBS_ENV_FILE; the file contains the secret key, so only its owner may
    read it."""
    lines = [
        f"{name}={value}" for name, value in env.items() if name != "TSHJOBS_ENV_FILE"
    ]
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")


def _seed_erp(data_dir: Path, customers: int, orders: int) -> None:
    from tshjobs.erp.db import init_schema
    from tshjobs.erp.seed import seed

    url = f"sqlite:///{data_dir / 'erp.db'}"
    marker = data_dir / "erp.seeded"
    if marker.exists():
        return
    print(f"Seeding the sample ERP ({customers} customers, {orders} orders)...")
    init_schema(url)
    seed(url, customers=customers, orders=orders, days=365, seed=1)
    marker.write_text("seeded\n")


def _admin_password(settings) -> str:
    from tshjobs import users

    password = secrets.token_urlsafe(12)
    if any(user["username"] == "admin" for user in users.list_users(settings)):
        users.set_password(settings, "admin", password)
    else:
        users.add_user(settings, "admin", password)
    return password


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child keeps it open
    return subprocess.Popen(
        args, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT
    )


def _stop(process: subprocess.Popen, sig=signal.SIGINT, timeout=30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ErpSimulator:
    """Plays ERP events against the demo ERP and enqueues the matching tasks."""

    def __init__(self, data_dir: Path, rng: random.Random):
        from tshjobs.erp.queries import ErpRepository

        self.url = f"sqlite:///{data_dir / 'erp.db'}"
        self.erp = ErpRepository(self.url)
        self.db = sqlite3.connect(data_dir / "erp.db", timeout=10)
        self.rng = rng
        self.customer_ids = [
            row[0] for row in self.db.execute("SELECT id FROM customers")
        ]
        self.product_ids = [
            row[0] for row in self.db.execute("SELECT id FROM products")
        ]

    def _open_invoice(self) -> int | None:
        row = self.db.execute(
            "SELECT id FROM invoices WHERE status = 'sent'"
            " ORDER BY id DESC LIMIT 1 OFFSET ?",
            (self.rng.randrange(50),),
        ).fetchone()
        return row[0] if row else None

    def _uninvoiced_order(self) -> int | None:
        row = self.db.execute(
            "SELECT o.id FROM orders o LEFT JOIN invoices i ON i.order_id = o.id"
            " WHERE i.id IS NULL ORDER BY o.id DESC LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def play(self, today) -> str:
        """Play one event and return what it was."""
        from tasks import emails, zoho

        roll = self.rng.random()
        if roll < 0.5:
            items = [
                (self.rng.choice(self.product_ids), self.rng.randint(1, 5))
                for _ in range(self.rng.randint(1, 3))
            ]
            order_id = self.erp.create_order(
                self.rng.choice(self.customer_ids), items, today
            )
            emails.send_order_confirmation_email(order_id)
            zoho.sync_order(order_id)
            return f"order {order_id}"
        if roll < 0.75 and (order_id := self._uninvoiced_order()):
            invoice_id = self.erp.create_invoice_for_order(order_id, today, 30)
            emails.send_invoice_email(invoice_id)
            zoho.sync_invoice(invoice_id)
            return f"invoice {invoice_id}"
        if roll < 0.9 and (invoice_id := self._open_invoice()):
            invoice = self.erp.get_invoice(invoice_id)
            payment_id = self.erp.record_payment(
                invoice_id, invoice.balance, today, "bank_transfer"
            )
            emails.send_payment_receipt(payment_id)
            zoho.sync_payment(payment_id)
            return f"payment {payment_id}"
        if roll < 0.95:
            customer_id = self.rng.choice(self.customer_ids)
            emails.send_welcome_email(customer_id)
            return f"welcome {customer_id}"

        overdue = self.erp.list_overdue_invoices(today)
        if overdue:
            invoice = self.rng.choice(overdue)
            emails.send_invoice_reminder_email(invoice.id, today.isoformat())
            return f"reminder {invoice.id}"
        return "nothing"


def _lock_data_dir(data_dir: Path):
    """Hold a lock on the data directory for the life of the process, so two
    demos cannot share it; return the open lock file."""
    lock = open(data_dir / "demo.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DemoError(
            f"another demo is running with the data directory {data_dir}; stop "
            "it, or pass --data-dir with another directory"
        ) from None
    return lock


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pass "
                "--port with a free port"
            ) from None


def _print_banner(
    port: int, password: str, mail_dir: Path, data_dir: Path, zoho_url: str
) -> None:
    print(
        f"""
tshjobs demo is running.
  Dashboard:  http://127.0.0.1:{port}/   user: admin   password: {password}
  Emails:     {mail_dir}/*.eml
  Zoho Books: sandbox at {zoho_url}
              calls: {zoho_url}/_sandbox/stats
              records: {zoho_url}/_sandbox/records/salesorders
  Logs:       {data_dir}/consumer.log, {data_dir}/dashboard.log
  CLI:        TSHJOBS_ENV_FILE={data_dir}/tshjobs.env .venv/bin/tshjobs tasks
  Press Ctrl-C to stop.
""",
        flush=True,
    )


def run_demo(data_dir, *, port=8080, customers=2000, orders=20000, events=300,
             speed=5.0) -> None:  # fmt: skip
    """Start every part, play `events` ERP events, then run until interrupted."""
    import datetime

    from tshjobs.mail.capture import CaptureServer
    from tshjobs.queue import get_huey
    from tshjobs.settings import load_settings

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Password hashes, the audit log and customers' emails live here.
    data_dir.chmod(0o700)
    configure_logging("WARNING")
    lock = _lock_data_dir(data_dir)
    _check_port_free(port)

    mail_dir = data_dir / "mail"
    capture = CaptureServer(mail_dir, host="127.0.0.1", port=0)
    capture.start()
    capture.reject_share(
        TEMPORARY_FAILURE_SHARE, 451, "4.3.0 Demo server busy, try again later"
    )

    zoho = _start_zoho_sandbox(data_dir)
    env = demo_environment(data_dir, capture.port, port, zoho)
    _write_env_file(data_dir / "tshjobs.env", env)
    os.environ.update(env)
    settings = load_settings()
    get_huey(settings)
    _seed_erp(data_dir, customers, orders)
    password = _admin_password(settings)

    python = sys.executable
    consumer = _start([python, "-m", "tshjobs.cli", "consumer"], env,
                      data_dir / "consumer.log")  # fmt: skip
    dashboard = _start(
        [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "dashboard.wsgi:app"],
        env, data_dir / "dashboard.log",
    )  # fmt: skip
    _print_banner(port, password, mail_dir, data_dir, zoho.url)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        simulator = ErpSimulator(data_dir, random.Random())
        today = datetime.date.today()
        for number in range(1, events + 1):
            if stop.is_set():
                break
            try:
                what = simulator.play(today)
            except Exception:
                logger.exception("Simulated ERP event %d failed", number)
                what = "a failed event (see the log above)"
            if number % 25 == 0 or number == events:
                print(f"ERP events played: {number}/{events} (last: {what}); "
                      f"emails received: {capture.message_count}", flush=True)  # fmt: skip
            stop.wait(1.0 / speed)
        print("The simulated day is over; the appliance keeps running.", flush=True)
        while not stop.wait(1.0):
            if consumer.poll() is not None or dashboard.poll() is not None:
                print("A demo process stopped; see the logs in " + str(data_dir))
                break
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping the demo...", flush=True)
        _stop(consumer, signal.SIGINT)
        _stop(dashboard, signal.SIGTERM)
        capture.stop()
        zoho.stop()
        lock.close()
