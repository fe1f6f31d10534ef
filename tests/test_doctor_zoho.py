"""The Zoho Books check of `tshjobs doctor`, run as a real process against the
local Zoho sandbox, with the token state in zoho.db."""

from __future__ import annotations

import pytest

from tests.services import free_port
from tests.test_cli import tshjobs
from tests.zoho_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
)
from tshjobs.erp.db import init_schema
from tshjobs.errors import ZohoReauthorizationRequired
from tshjobs.mail.capture import CaptureServer
from tshjobs.settings import load_settings
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer
from tshjobs.zoho.tokens import token_manager


@pytest.fixture
def sandbox():
    with SandboxServer(SandboxConfig(window_seconds=1.0)) as server:
        yield server


@pytest.fixture
def env(base_env, tmp_path, sandbox):
    smtp = CaptureServer(tmp_path / "mail", host="127.0.0.1", port=free_port())
    smtp.start()
    init_schema(base_env["TSHJOBS_ERP_DATABASE_URL"])
    yield {
        **base_env,
        "TSHJOBS_SMTP_PORT": str(smtp.port),
        "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url,
        "TSHJOBS_ZOHO_CLIENT_ID": CLIENT_ID,
        "TSHJOBS_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
        "TSHJOBS_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN,
        "TSHJOBS_ZOHO_ORGANIZATION_ID": ORGANIZATION_ID,
    }
    smtp.stop()


def test_doctor_zoho_ok_without_calling_zoho(env, sandbox):
    result = tshjobs(env, "doctor")

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"ok   Zoho Books: data centre com, organization {ORGANIZATION_ID}; "
        "no access token fetched yet" in result.stdout
    )
    assert sandbox.stats()["token_requests"] == 0
    assert sandbox.stats()["requests"] == 0


def test_doctor_zoho_shows_token_expiry(env, sandbox):
    token_manager(load_settings(env)).access_token()

    result = tshjobs(env, "doctor")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "; access token stored, expires " in result.stdout
    assert sandbox.stats()["token_requests"] == 1


def test_doctor_zoho_fails_on_reauthorization(env, sandbox):
    sandbox.revoke_refresh_token()
    with pytest.raises(ZohoReauthorizationRequired):
        token_manager(load_settings(env)).access_token()

    result = tshjobs(env, "doctor")
    output = result.stdout + result.stderr

    assert result.returncode == 1
    assert "FAIL Zoho Books: ZohoReauthorizationRequired: Zoho needs " in output
    assert "TSHJOBS_ZOHO_REFRESH_TOKEN" in output
    assert "restart the services" in output
    assert sandbox.stats()["token_requests"] == 1
    assert CLIENT_SECRET not in output
    assert REFRESH_TOKEN not in output


def test_doctor_zoho_names_missing_settings(env):
    partial = {**env, "TSHJOBS_ZOHO_ORGANIZATION_ID": ""}

    result = tshjobs(partial, "doctor")

    assert result.returncode == 1
    assert "FAIL Zoho Books: ZohoNotConfigured: " in result.stdout
    assert "TSHJOBS_ZOHO_ORGANIZATION_ID" in result.stdout


def test_doctor_skips_zoho_when_not_configured(env):
    without_zoho = {**env, "TSHJOBS_ZOHO_CLIENT_ID": ""}

    result = tshjobs(without_zoho, "doctor")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Zoho Books" not in result.stdout
