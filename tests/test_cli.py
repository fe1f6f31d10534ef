"""The `tshjobs` command line, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.consumers import REPO
from tests.services import free_port
from tshjobs.erp.db import init_schema
from tshjobs.mail.capture import CaptureServer


def tshjobs(env, *args, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tshjobs.cli", *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.fixture
def smtp(tmp_path):
    server = CaptureServer(tmp_path / "mail", host="127.0.0.1", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(base_env, smtp):
    init_schema(base_env["TSHJOBS_ERP_DATABASE_URL"])
    return {**base_env, "TSHJOBS_SMTP_PORT": str(smtp.port)}


def test_doctor_all_ok(env):
    result = tshjobs(env, "doctor")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed." in result.stdout
    for check in ("settings", "queue", "audit log", "ERP database", "SMTP server"):
        assert f"ok   {check}:" in result.stdout


def test_doctor_names_failures(env):
    broken = {
        **env,
        "TSHJOBS_SMTP_PORT": str(free_port()),
        "TSHJOBS_ERP_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }

    result = tshjobs(broken, "doctor")

    assert result.returncode == 1
    assert "FAIL SMTP server:" in result.stdout
    assert "FAIL ERP database:" in result.stdout
    assert "ok   queue:" in result.stdout


def test_doctor_fails_on_corrupt_state_database(env):
    state = Path(env["TSHJOBS_DATA_DIR"]) / "tshjobs.db"
    state.write_bytes(b"not a database" * 600)

    result = tshjobs(env, "doctor")

    assert result.returncode == 1
    assert f"FAIL state database: DatabaseError: {state}" in result.stdout


def test_doctor_bad_settings_no_secret(env):
    bad = {**env, "TSHJOBS_WORKERS": "lots", "TSHJOBS_SMTP_PASSWORD": "hunter2-secret"}

    result = tshjobs(bad, "doctor")

    assert result.returncode == 1
    assert "TSHJOBS_WORKERS='lots' is invalid" in result.stdout
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert env["TSHJOBS_SECRET_KEY"] not in result.stdout + result.stderr


def test_invalid_settings_stop_consumer(env):
    result = tshjobs({**env, "TSHJOBS_WORKER_TYPE": "fiber"}, "consumer")

    assert result.returncode != 0
    assert "TSHJOBS_WORKER_TYPE='fiber' is invalid" in result.stderr
    assert "allowed: thread, process" in result.stderr


def test_user_add_and_reject_short_password(env):
    added = tshjobs(env, "user", "add", "admin", "--password-stdin",
                    stdin="correct horse battery\n")  # fmt: skip
    short = tshjobs(env, "user", "add", "bob", "--password-stdin", stdin="short\n")
    again = tshjobs(env, "user", "add", "admin", "--password-stdin",
                    stdin="another long password\n")  # fmt: skip

    assert added.returncode == 0, added.stderr
    assert "User admin added." in added.stdout
    assert short.returncode == 1
    assert "12" in short.stderr
    assert again.returncode == 1
    assert "admin" in again.stderr


def test_enqueue_tasks_and_retry(env):
    queued = tshjobs(env, "enqueue", "send_welcome_email", "7")
    unknown = tshjobs(env, "enqueue", "send_nothing", "7")

    assert queued.returncode == 0, queued.stderr
    task_id = queued.stdout.strip()
    listing = tshjobs(env, "tasks")
    assert task_id in listing.stdout
    assert "queued" in listing.stdout
    assert "tasks.emails.send_welcome_email" in listing.stdout
    assert unknown.returncode == 1
    assert "no registered task is called 'send_nothing'" in unknown.stderr

    not_failed = tshjobs(env, "retry", task_id)
    assert not_failed.returncode == 1
    assert "only failed, revoked, expired tasks can be retried" in not_failed.stderr


def test_doctor_does_not_create_missing_erp(env, tmp_path):
    missing = tmp_path / "no-such-erp.db"

    result = tshjobs(
        {**env, "TSHJOBS_ERP_DATABASE_URL": f"sqlite:///{missing}"}, "doctor"
    )

    assert result.returncode == 1
    assert "FAIL ERP database: FileNotFoundError" in result.stdout
    assert not missing.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["03"], "customer_id must be int, got str '03'"),
        (["NaN"], "customer_id must be int, got float nan"),
        (["3", "no"], "force must be bool, got str 'no'"),
        (["0"], "customer_id must be from 1 to"),
    ],
)
def test_enqueue_rejects_bad_arguments(env, args, message):
    result = tshjobs(env, "enqueue", "send_welcome_email", *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_task_module_is_clean_error(env):
    bad = {**env, "TSHJOBS_TASK_MODULES": "tasks,no_such_tasks"}

    consumer = tshjobs(bad, "consumer")
    doctor = tshjobs(bad, "doctor")

    assert consumer.returncode == 1
    assert "cannot import 'no_such_tasks'" in consumer.stderr
    assert "Traceback" not in consumer.stderr
    assert "FAIL task modules:" in doctor.stdout


def test_tasks_rejects_unknown_state(env):
    result = tshjobs(env, "tasks", "--state", "bogus")

    assert result.returncode == 2
    assert "'bogus' is not one of" in result.stderr


def test_user_passwd_list_delete(env):
    from tshjobs.settings import load_settings
    from tshjobs.users import verify_password

    tshjobs(env, "user", "add", "carol", "--password-stdin",
            stdin="first long password\r\n")  # fmt: skip
    changed = tshjobs(env, "user", "passwd", "carol", "--password-stdin",
                      stdin="second long password\r\n")  # fmt: skip
    listed = tshjobs(env, "user", "list")

    settings = load_settings({**env})
    assert changed.returncode == 0, changed.stderr
    assert verify_password(settings, "carol", "second long password")
    assert not verify_password(settings, "carol", "first long password")
    assert listed.stdout.split() == ["carol"]

    deleted = tshjobs(env, "user", "delete", "carol")
    missing = tshjobs(env, "user", "delete", "carol")
    assert deleted.returncode == 0
    assert tshjobs(env, "user", "list").stdout == ""
    assert missing.returncode == 1
    assert "carol" in missing.stderr


def test_enqueue_resolves_short_names(env):
    result = tshjobs(env, "enqueue", "sync_customer", "5")
    unknown = tshjobs(env, "enqueue", "no_such_task", "5")

    assert result.returncode == 0, result.stderr
    assert unknown.returncode == 1
    assert "no registered task is called 'no_such_task'" in unknown.stderr
