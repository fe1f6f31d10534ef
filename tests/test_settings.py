"""Settings: parsing, validation messages, the env file, secrets kept out."""

from __future__ import annotations

import pytest

from tshjobs.errors import ConfigError
from tshjobs.settings import Settings, load_settings

SECRET = "s3cret-" + "x" * 40
VALID = {
    "TSHJOBS_ENV_FILE": "",
    "TSHJOBS_SECRET_KEY": SECRET,
    "TSHJOBS_ERP_DATABASE_URL": "postgresql://erp@127.0.0.1:5432/erp",
}


def load(**overrides) -> Settings:
    return load_settings({**VALID, **overrides})


def test_defaults_are_valid():
    settings = load()

    assert settings.redis_url == ""
    assert settings.retry_delays == (60.0, 120.0, 240.0)
    assert settings.smtp_security == "none"
    assert settings.task_modules == ("tasks",)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TSHJOBS_WORKERS", "many", "expected a whole number"),
        ("TSHJOBS_WORKERS", "0", "from 1 to 64"),
        ("TSHJOBS_WORKER_TYPE", "greenlet", "allowed: thread, process"),
        ("TSHJOBS_SMTP_SECURITY", "tls", "allowed: ssl, starttls, none"),
        ("TSHJOBS_SMTP_PORT", "70000", "from 1 to 65535"),
        ("TSHJOBS_SMTP_TIMEOUT", "soon", "expected a number"),
        ("TSHJOBS_SMTP_VERIFY_TLS", "maybe", "expected true or false"),
        ("TSHJOBS_REDIS_URL", "localhost:6379", "redis://"),
        ("TSHJOBS_ERP_DATABASE_URL", "mysql://x/y", "postgresql://"),
        ("TSHJOBS_RETRY_DELAYS", "60,-1", "from 0 to 604800 seconds"),
        ("TSHJOBS_RETRY_JITTER", "2", "from 0 to 1"),
        ("TSHJOBS_MANAGEMENT_EMAILS", "boss@example.com,nobody", "'nobody'"),
        ("TSHJOBS_MAIL_FROM", "TSH", "one address such as"),
        ("TSHJOBS_DASHBOARD_BIND", "8080", "host:port"),
        ("TSHJOBS_LOG_LEVEL", "LOUD", "allowed: DEBUG"),
        ("TSHJOBS_TASK_MODULES", "tasks,bad-name", "not a Python module name"),
    ],
)
def test_invalid_value_names_variable_and_value(name, value, expected):
    with pytest.raises(ConfigError) as caught:
        load(**{name: value})

    message = str(caught.value)
    assert name in message
    assert repr(value) in message
    assert expected in message


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as caught:
        load_settings({"TSHJOBS_ENV_FILE": "", "TSHJOBS_WORKERS": "0"})

    message = str(caught.value)
    assert "TSHJOBS_SECRET_KEY is missing" in message
    assert "TSHJOBS_ERP_DATABASE_URL is missing" in message
    assert "TSHJOBS_WORKERS='0'" in message


def test_secret_never_in_error():
    with pytest.raises(ConfigError) as caught:
        load(TSHJOBS_SECRET_KEY="short-secret", TSHJOBS_SMTP_PASSWORD="")

    assert "short-secret" not in str(caught.value)
    assert "TSHJOBS_SECRET_KEY=(hidden)" in str(caught.value)


def test_describe_masks_secrets():
    described = load(TSHJOBS_SMTP_PASSWORD="hunter2hunter2").describe()

    assert described["TSHJOBS_SECRET_KEY"] == "(set)"
    assert described["TSHJOBS_SMTP_PASSWORD"] == "(set)"
    assert SECRET not in str(described)
    assert "hunter2" not in str(described)


def test_env_file_read_and_environment_wins(tmp_path):
    env_file = tmp_path / "tshjobs.env"
    env_file.write_text(
        "# production settings\n"
        f"TSHJOBS_SECRET_KEY='{SECRET}'\n"
        "TSHJOBS_ERP_DATABASE_URL=sqlite:///erp.db\n"
        "\n"
        "TSHJOBS_WORKERS=8\n"
    )

    settings = load_settings(
        {"TSHJOBS_ENV_FILE": str(env_file), "TSHJOBS_WORKERS": "2"}
    )

    assert settings.secret_key == SECRET
    assert settings.erp_database_url == "sqlite:///erp.db"
    assert settings.workers == 2


def test_env_file_bad_line(tmp_path):
    env_file = tmp_path / "tshjobs.env"
    env_file.write_text("TSHJOBS_WORKERS 8\n")

    with pytest.raises(ConfigError, match=r"tshjobs.env:1: expected NAME=value"):
        load_settings({"TSHJOBS_ENV_FILE": str(env_file)})


def test_env_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings({"TSHJOBS_ENV_FILE": str(tmp_path / "absent.env")})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TSHJOBS_DASHBOARD_BIND", "127.0.0.1:99999", "port from 1 to 65535"),
        ("TSHJOBS_MAIL_FROM", "a@b.c>, evil@y.com", "must be one address"),
        ("TSHJOBS_MAIL_FROM", "x <a@b.c> y", "must be one address"),
        ("TSHJOBS_ERP_DATABASE_URL", "sqlite://x.db", "sqlite:///"),
        ("TSHJOBS_RETRY_DELAYS", ",", "at least one delay"),
        ("TSHJOBS_RETRY_DELAYS", "60,inf", "from 0 to 604800"),
        ("TSHJOBS_RETRY_DELAYS", "60,soon", "comma-separated numbers"),
        ("TSHJOBS_COMPANY_NAME", "TSH\r\nBcc: x@example.com", "control characters"),
    ],
)
def test_more_invalid_values(name, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load(**{name: value})


def test_display_name_with_comma_accepted():
    settings = load(TSHJOBS_MAIL_FROM='"Müller, Hans" <hans@example.com>')

    assert settings.mail_from == '"Müller, Hans" <hans@example.com>'


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TSHJOBS_ERP_DATABASE_URL", "mysql://erp:Hunter2Secret@db.internal/erp"),
        ("TSHJOBS_REDIS_URL", "http://:Hunter2Secret@127.0.0.1/0"),
    ],
)
def test_url_password_hidden_in_error(name, value):
    with pytest.raises(ConfigError) as caught:
        load(**{name: value})

    assert "Hunter2Secret" not in str(caught.value)
    assert ":***@" in str(caught.value)


def test_describe_hides_url_password():
    described = load(
        TSHJOBS_REDIS_URL="redis://:Hunter2Secret@127.0.0.1:6379/1"
    ).describe()

    assert described["TSHJOBS_REDIS_URL"] == "redis://:***@127.0.0.1:6379/1"


@pytest.mark.parametrize(
    ("name", "url", "secret"),
    [
        ("TSHJOBS_ERP_DATABASE_URL", "postgresql://u:Secr%zzet@127.0.0.1/db", "zzet"),
        ("TSHJOBS_ERP_DATABASE_URL", "postgresql://u:pa#ss@127.0.0.1:5999/db", "pa#ss"),
        ("TSHJOBS_ERP_DATABASE_URL", "postgresql://u:pa/ss@127.0.0.1/db", "pa/ss"),
        (
            "TSHJOBS_ERP_DATABASE_URL",
            "postgresql://u:open sesame@127.0.0.1/db",
            "sesame",
        ),
        ("TSHJOBS_REDIS_URL", "redis://:pa#ss@127.0.0.1:6379/0", "pa#ss"),
    ],
)
def test_unencoded_url_password_rejected_unshown(name, url, secret):
    environ = {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_SECRET_KEY": "k" * 40,
        "TSHJOBS_ERP_DATABASE_URL": "sqlite:///erp.db",
        name: url,
    }

    with pytest.raises(ConfigError) as caught:
        load_settings(environ)

    assert name in str(caught.value)
    assert "percent-encoded" in str(caught.value)
    assert secret not in str(caught.value)


def test_encoded_url_password_accepted():
    environ = {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_SECRET_KEY": "k" * 40,
        "TSHJOBS_ERP_DATABASE_URL": "postgresql://u:p%40ss%23@127.0.0.1:5432/db",
    }

    settings = load_settings(environ)

    assert settings.erp_database_url.endswith("/db")


def test_relative_data_dir_rejected():
    environ = {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_SECRET_KEY": "k" * 40,
        "TSHJOBS_ERP_DATABASE_URL": "sqlite:///erp.db",
        "TSHJOBS_DATA_DIR": "relative/dir",
    }

    with pytest.raises(ConfigError, match="TSHJOBS_DATA_DIR='relative/dir'"):
        load_settings(environ)
