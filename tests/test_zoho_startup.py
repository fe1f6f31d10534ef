"""The Zoho Books check a consumer runs at start-up, against the sandbox."""

from __future__ import annotations

import logging

import pytest

from tests.test_cli import tshjobs
from tests.zoho_support import zoho_settings
from tshjobs.errors import ZohoDataCentreMismatch
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer
from tshjobs.zoho.startup import check_zoho_at_start


@pytest.fixture
def sandbox():
    with SandboxServer(SandboxConfig(window_seconds=1.0)) as server:
        yield server


def test_start_takes_one_shared_token(tmp_path, sandbox):
    settings = zoho_settings(tmp_path / "data", sandbox.url)

    check_zoho_at_start(settings)
    check_zoho_at_start(settings)

    assert sandbox.stats()["tokens_issued"] == 1


def test_start_fails_on_foreign_api_domain(tmp_path, sandbox):
    sandbox.set_config(api_domain="https://www.zohoapis.eu")
    settings = zoho_settings(tmp_path / "data", sandbox.url)

    with pytest.raises(ZohoDataCentreMismatch, match="TSHJOBS_ZOHO_DATA_CENTRE"):
        check_zoho_at_start(settings)


def test_start_goes_on_when_reauthorisation_needed(tmp_path, sandbox, caplog):
    sandbox.revoke_refresh_token()
    settings = zoho_settings(tmp_path / "data", sandbox.url)

    with caplog.at_level(logging.WARNING, logger="tshjobs.zoho.startup"):
        check_zoho_at_start(settings)

    assert "not usable yet" in caplog.text
    assert "sandbox-refresh-token" not in caplog.text


def test_start_skipped_without_zoho(tmp_path):
    settings = zoho_settings(tmp_path / "data", "", zoho_client_id="")

    check_zoho_at_start(settings)


def test_consumer_exits_on_data_centre_mismatch(base_env, sandbox):
    sandbox.set_config(api_domain="https://www.zohoapis.eu")
    env = {
        **base_env,
        "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url,
        "TSHJOBS_ZOHO_CLIENT_ID": "sandbox-client",
        "TSHJOBS_ZOHO_CLIENT_SECRET": "sandbox-secret",
        "TSHJOBS_ZOHO_REFRESH_TOKEN": "sandbox-refresh-token",
        "TSHJOBS_ZOHO_ORGANIZATION_ID": "60012345",
    }

    result = tshjobs(env, "consumer")

    assert result.returncode == 1
    assert "api_domain" in result.stderr or "API host" in result.stderr
    assert "sandbox-secret" not in result.stderr


def test_consumer_exits_on_half_configured_zoho(base_env):
    env = {**base_env, "TSHJOBS_ZOHO_CLIENT_ID": "sandbox-client"}

    result = tshjobs(env, "consumer")

    assert result.returncode == 1
    assert "TSHJOBS_ZOHO_REFRESH_TOKEN" in result.stderr
