"""The `tshjobs` command line."""

from __future__ import annotations

import json
import os
import sys

import click

from tshjobs.audit import STATES
from tshjobs.errors import ConfigError, TshjobsError
from tshjobs.logconfig import configure_logging
from tshjobs.settings import get_settings
from tshjobs.zoho.sandbox.cli import zoho_sandbox


def _settings():
    try:
        return get_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _load_tasks(settings) -> None:
    """Configure the queue and import the task modules, or exit cleanly."""
    from tshjobs.queue import get_huey, import_task_modules

    get_huey(settings)
    try:
        import_task_modules(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@click.group()
@click.version_option(package_name="tshjobs")
def main():
    """tshjobs: background jobs for the TSH ERP.

    Settings come from TSHJOBS_* environment variables and the env file
    /etc/tshjobs/tshjobs.env (see `tshjobs doctor`).
    """


@main.command()
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 64),
    default=None,
    help="Number of workers (default: TSHJOBS_WORKERS).",
)
@click.option(
    "--worker-type",
    "-k",
    type=click.Choice(["thread", "process"]),
    default=None,
    help="Worker type (default: TSHJOBS_WORKER_TYPE).",
)
@click.option(
    "--no-periodic",
    is_flag=True,
    help="Do not enqueue periodic tasks from this consumer.",
)
def consumer(workers, worker_type, no_periodic):  # fmt: skip
    """Run a Huey consumer that executes the appliance's tasks."""
    settings = _settings()
    configure_logging(settings.log_level)

    from tshjobs.consumer import run_consumer
    from tshjobs.zoho.startup import check_zoho_at_start

    _load_tasks(settings)
    try:
        check_zoho_at_start(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    run_consumer(settings, workers, worker_type, periodic=not no_periodic)


@main.command()
@click.option(
    "--bind", default=None, help="host:port (default: TSHJOBS_DASHBOARD_BIND)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=2,
    help="Number of gunicorn worker processes.",
)
def dashboard(bind, workers):  # fmt: skip
    """Serve the dashboard with gunicorn."""
    settings = _settings()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    args = [
        gunicorn,
        "--bind", bind or settings.dashboard_bind,
        "--workers", str(workers),
        "--access-logfile", "-",
        "dashboard.wsgi:app",
    ]  # fmt: skip
    os.execv(gunicorn, args)


@main.command()
def doctor():
    """Check every setting and connection and report what is wrong."""
    from tshjobs.doctor import run_checks

    checks, ok = run_checks()
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        click.echo(f"{mark} {check.name}: {check.detail}")
    if ok:
        click.echo("All checks passed.")
    sys.exit(0 if ok else 1)


@main.group()
def erp():
    """Create and fill the ERP database."""


@erp.command("init")
def erp_init():
    """Create the reference ERP tables (no data); safe to run twice."""
    from tshjobs.erp.db import init_schema

    init_schema(_settings().erp_database_url)
    click.echo("ERP schema ready.")


@erp.command("seed")
@click.option(
    "--customers",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Number of customers to create.",
)
@click.option(
    "--orders",
    type=click.IntRange(0, 10_000_000),
    default=20000,
    show_default=True,
    help="Number of orders to create.",
)
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=365,
    help="Spread the orders over this many days up to today.",
)
@click.option("--seed", "random_seed", type=int, default=1, help="Random seed.")
def erp_seed(customers, orders, days, random_seed):  # fmt: skip
    """Fill the ERP database with realistic sample data."""
    from tshjobs.erp.db import init_schema
    from tshjobs.erp.seed import seed

    url = _settings().erp_database_url
    init_schema(url)
    summary = seed(url, customers=customers, orders=orders, days=days,
                   seed=random_seed)  # fmt: skip
    click.echo(f"ERP seeded: {summary}")


@main.group()
def user():
    """Manage dashboard users."""


_password_stdin = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input instead of a prompt.",
)


@user.command("add")
@click.argument("username")
@_password_stdin
def user_add(username, password_stdin):
    """Add a dashboard user."""
    from tshjobs.users import add_user

    password = _read_password(password_stdin)
    try:
        add_user(_settings(), username, password)
    except (TshjobsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"User {username} added.")


@user.command("passwd")
@click.argument("username")
@_password_stdin
def user_passwd(username, password_stdin):
    """Set a user's password and end the user's dashboard sessions."""
    from tshjobs.users import set_password

    password = _read_password(password_stdin)
    try:
        set_password(_settings(), username, password)
    except (TshjobsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Password of {username} changed.")


@user.command("delete")
@click.argument("username")
def user_delete(username):
    """Delete a dashboard user and end the user's sessions."""
    from tshjobs.users import delete_user

    try:
        delete_user(_settings(), username)
    except (TshjobsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"User {username} deleted.")


@user.command("list")
def user_list():
    """List dashboard users."""
    from tshjobs.users import list_users

    for row in list_users(_settings()):
        click.echo(row["username"])


@main.command("enqueue")
@click.argument("task_name")
@click.argument("args", nargs=-1)
def enqueue(task_name, args):
    """Enqueue TASK_NAME with ARGS (each parsed as JSON, else a string)."""
    from tshjobs.queue import enqueue_by_name, resolve_task_name

    _load_tasks(_settings())
    try:
        name = resolve_task_name(task_name)
    except TshjobsError as exc:
        raise click.ClickException(str(exc)) from None
    values = []
    for arg in args:
        try:
            values.append(json.loads(arg))
        except json.JSONDecodeError:
            values.append(arg)
    try:
        task_id = enqueue_by_name(name, values)
    except TshjobsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(task_id)


@main.command("retry")
@click.argument("task_id")
def retry(task_id):
    """Enqueue a failed task again with its arguments."""
    import getpass

    from tshjobs.queue import retry_task

    _load_tasks(_settings())
    try:
        new_id = retry_task(task_id, f"cli:{getpass.getuser()}", _settings())
    except TshjobsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(new_id)


@main.command("tasks")
@click.option(
    "--state",
    type=click.Choice(STATES),
    default=None,
    help="Only tasks in this state.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20)
def list_tasks(state, limit):
    """List recent tasks from the audit log, newest first."""
    from tshjobs.queue import audit_log

    for row in audit_log(_settings()).search(state=state, limit=limit):
        error = f"  {row['error']}" if row["error"] else ""
        click.echo(
            f"{row['id']}  {row['state']:<9}  {row['name']}  {row['args']}{error}"
        )


@main.command()
@click.option(
    "--data-dir",
    default="demo-data",
    show_default=True,
    help="Where the demo keeps its databases and received emails.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="Dashboard port on 127.0.0.1.",
)
@click.option(
    "--customers",
    type=click.IntRange(10, 100_000),
    default=2000,
    show_default=True,
    help="Customers in the sample ERP (used on the first start only).",
)
@click.option(
    "--orders",
    type=click.IntRange(0, 1_000_000),
    default=20000,
    show_default=True,
    help="Past orders in the sample ERP (used on the first start only).",
)
@click.option(
    "--events",
    type=click.IntRange(0, 100_000),
    default=300,
    show_default=True,
    help="ERP events (orders, invoices, payments) the simulated day plays.",
)
@click.option(
    "--speed",
    type=click.FloatRange(0.1, 1000),
    default=5.0,
    show_default=True,
    help="Simulated ERP events per second.",
)
def demo(data_dir, port, customers, orders, events, speed):  # fmt: skip
    """Start the appliance on embedded defaults and play a day of ERP activity."""
    from tshjobs.demo import DemoError, run_demo

    try:
        run_demo(data_dir, port=port, customers=customers, orders=orders,
                 events=events, speed=speed)  # fmt: skip
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None


main.add_command(zoho_sandbox)


if __name__ == "__main__":
    main()
