"""The shared Zoho access token: one fetch and one refresh for many workers,
the token request budget, a dead refresh token and the data centre check.

Each test runs against the SQLite store and against Redis, with the Zoho
sandbox as the accounts server.
"""

from __future__ import annotations

import logging
import multiprocessing
import stat
import time

import pytest

from tests.zoho_support import (
    CLIENT_SECRET,
    REFRESH_TOKEN,
    client_for,
    refresh_in_process,
    run_threads,
    zoho_settings,
)
from tshjobs.errors import (
    ZohoDataCentreMismatch,
    ZohoNotConfigured,
    ZohoReauthorizationRequired,
    ZohoTokenLimited,
)
from tshjobs.settings import Settings
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.tokens import token_manager, token_status

pytest_plugins = ["tests.zoho_fixtures"]


def test_token_fetched_once_by_8_threads(sandbox_settings, sandbox):
    def call(index):
        with client_for(sandbox_settings) as client:
            return client.get("/contacts")["code"]

    results = run_threads(8, call)

    assert results == [0] * 8
    assert sandbox.stats()["tokens_issued"] == 1


def test_token_fetched_once_by_4_processes(sandbox_settings, sandbox):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(
            target=refresh_in_process, args=(sandbox_settings, barrier, results, 0)
        )
        for _ in range(4)
    ]

    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert outcomes == [["token"]] * 4
    assert sandbox.stats()["tokens_issued"] == 1
    assert sandbox.stats()["token_requests"] == 1


def test_token_refreshed_ahead_of_expiry(sandbox_settings, sandbox):
    now = [time.time()]
    manager = token_manager(sandbox_settings, clock=lambda: now[0])
    first = manager.access_token()

    now[0] += 3600 - sandbox_settings.zoho_refresh_margin - 1
    unchanged = manager.access_token()
    now[0] += 2
    refreshed = manager.access_token()

    assert unchanged.value == first.value
    assert refreshed.value != first.value
    assert sandbox.stats()["tokens_issued"] == 2


def test_expiry_mid_batch_refreshes_once(sandbox_settings, sandbox):
    clients = [client_for(sandbox_settings) for _ in range(8)]
    clients[0].get("/contacts")
    sandbox.expire_tokens()

    results = run_threads(8, lambda index: clients[index].get("/contacts")["code"])

    assert results == [0] * 8
    assert sandbox.stats()["tokens_issued"] == 2
    assert sandbox.stats()["by_status"].get(401, 0) <= 8
    for client in clients:
        client.close()


def test_rejected_token_refreshed_only_if_still_stored(sandbox_settings, sandbox):
    manager = token_manager(sandbox_settings)
    old = manager.access_token()
    new = manager.refresh(failed_token=old.value)

    again = manager.refresh(failed_token=old.value)

    assert again.value == new.value
    assert sandbox.stats()["tokens_issued"] == 2


def test_token_budget_never_exceeded_by_processes(sandbox_settings, sandbox):
    # 4 processes force 10 refreshes each. A refresh may take the token that
    # another process just stored, but each stored token serves at most the
    # 3 others, so 40 refreshes spend the budget of 10 whatever the order.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(
            target=refresh_in_process, args=(sandbox_settings, barrier, results, 10)
        )
        for _ in range(4)
    ]

    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    names = {name for outcome_list in outcomes for name in outcome_list}
    assert names <= {"token", "refreshed", "ZohoTokenLimited"}
    assert sandbox.stats()["token_requests"] == 10
    assert sandbox.stats()["token_requests_denied"] == 0


def test_token_limited_carries_retry_time(sandbox_settings, sandbox):
    manager = token_manager(sandbox_settings, request_limit=2)
    token = manager.refresh(failed_token="")
    token = manager.refresh(failed_token=token.value)

    with pytest.raises(ZohoTokenLimited) as caught:
        manager.refresh(failed_token=token.value)

    assert caught.value.retry_at.timestamp() > time.time()
    assert "/oauth/v2/token" in str(caught.value)
    assert sandbox.stats()["token_requests"] == 2


def test_zoho_token_denial_spends_budget(sandbox_settings, sandbox):
    sandbox.inject("429", path="/oauth/v2/token")
    manager = token_manager(sandbox_settings)

    with pytest.raises(ZohoTokenLimited) as first:
        manager.access_token()
    with pytest.raises(ZohoTokenLimited):
        manager.access_token()

    assert first.value.code == "Access Denied"
    assert sandbox.stats()["token_requests"] == 1


def test_invalid_code_needs_reauthorization(sandbox_settings, sandbox, caplog):
    sandbox.revoke_refresh_token()
    manager = token_manager(sandbox_settings)

    with (
        caplog.at_level(logging.ERROR, logger="tshjobs.zoho.tokens"),
        pytest.raises(ZohoReauthorizationRequired) as first,
    ):
        manager.access_token()
    with pytest.raises(ZohoReauthorizationRequired):
        token_manager(sandbox_settings).access_token()
    status = token_status(sandbox_settings)

    assert first.value.code == "invalid_code"
    assert sandbox.stats()["token_requests"] == 1
    assert status.needs_reauthorization
    assert "re-authorisation" in status.message
    assert "invalid_code" in status.last_error
    assert status.last_error_at is not None
    assert "invalid" in caplog.text


def test_new_refresh_token_clears_reauthorization(sandbox_settings, sandbox):
    sandbox.revoke_refresh_token()
    with pytest.raises(ZohoReauthorizationRequired):
        token_manager(sandbox_settings).access_token()
    sandbox.reset()
    sandbox.set_config(refresh_token="new-refresh-token")
    renewed = zoho_settings(
        sandbox_settings.data_dir, sandbox.url, sandbox_settings.redis_url,
        zoho_refresh_token="new-refresh-token",
    )  # fmt: skip

    token = token_manager(renewed).access_token()

    assert token.value
    assert not token_status(renewed).needs_reauthorization


def test_status_shows_token_times(sandbox_settings, sandbox):
    token_manager(sandbox_settings).access_token()

    status = token_status(sandbox_settings)

    assert status.configured
    assert not status.needs_reauthorization
    assert status.api_url == sandbox.url
    assert status.expires_at > status.refreshed_at
    assert status.last_error == ""


def test_data_centre_mismatch_at_start(sandbox_settings, sandbox):
    sandbox.set_config(api_domain="https://www.zohoapis.eu")

    with pytest.raises(ZohoDataCentreMismatch) as caught:
        client_for(sandbox_settings).get("/contacts")
    with pytest.raises(ZohoDataCentreMismatch):
        token_manager(sandbox_settings).access_token()

    assert "www.zohoapis.eu" in str(caught.value)
    assert "TSHJOBS_ZOHO_DATA_CENTRE" in str(caught.value)
    assert sandbox.stats()["token_requests"] == 1
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("data_centre", "api_domain", "valid"),
    [
        ("com", "https://www.zohoapis.com", True),
        ("com", "https://www.zohoapis.eu", False),
        ("com", "http://www.zohoapis.com", False),
        ("eu", "https://www.zohoapis.eu", True),
        ("com.au", "https://www.zohoapis.com.au", True),
        ("com.au", "https://www.zohoapis.com", False),
        ("ca", "https://www.zohoapis.ca", True),
        ("com.cn", "https://www.zohoapis.com.cn", True),
        ("uk", "https://www.zohoapis.uk", True),
        ("in", "https://evil.example/www.zohoapis.in", False),
        ("com", "", False),
    ],
)
def test_api_domain_checked_against_data_centre(data_centre, api_domain, valid):
    settings = zoho_settings(None, "", zoho_data_centre=data_centre)
    config = ZohoConfig.from_settings(settings)

    if valid:
        assert config.check_api_domain(api_domain) == api_domain
    else:
        with pytest.raises(ZohoDataCentreMismatch):
            config.check_api_domain(api_domain)


@pytest.mark.parametrize(
    ("data_centre", "accounts_url"),
    [
        ("com", "https://accounts.zoho.com"),
        ("eu", "https://accounts.zoho.eu"),
        ("ca", "https://accounts.zohocloud.ca"),
        ("sa", "https://accounts.zoho.sa"),
        ("com.cn", "https://accounts.zoho.com.cn"),
    ],
)
def test_accounts_url_from_data_centre(data_centre, accounts_url):
    settings = zoho_settings(None, "", zoho_data_centre=data_centre)

    config = ZohoConfig.from_settings(settings)

    assert config.token_url == accounts_url + "/oauth/v2/token"


def test_accounts_url_of_other_data_centre_rejected():
    settings = zoho_settings(None, "https://accounts.zoho.eu", zoho_data_centre="com")

    with pytest.raises(ZohoDataCentreMismatch) as caught:
        ZohoConfig.from_settings(settings)

    assert "accounts.zoho.eu" in str(caught.value)


def test_missing_settings_named(tmp_path):
    sandbox_settings = Settings(data_dir=tmp_path, zoho_client_id="client")

    with pytest.raises(ZohoNotConfigured) as caught:
        token_manager(sandbox_settings)

    assert "TSHJOBS_ZOHO_CLIENT_SECRET" in str(caught.value)
    assert "TSHJOBS_ZOHO_REFRESH_TOKEN" in str(caught.value)
    assert "TSHJOBS_ZOHO_ORGANIZATION_ID" in str(caught.value)
    assert "TSHJOBS_ZOHO_CLIENT_ID" not in str(caught.value)


def test_status_without_zoho(tmp_path):
    status = token_status(Settings(data_dir=tmp_path))

    assert not status.configured
    assert status.message == "Zoho Books is not configured"


def test_sqlite_store_private(tmp_path, sandbox):
    settings = zoho_settings(tmp_path / "data", sandbox.url)

    token_manager(settings).access_token()

    mode = stat.S_IMODE((tmp_path / "data" / "zoho.db").stat().st_mode)
    assert mode == 0o600


def test_token_and_secrets_never_logged(sandbox_settings, sandbox, caplog):
    with (
        caplog.at_level(logging.DEBUG, logger="tshjobs.zoho"),
        client_for(sandbox_settings) as client,
    ):
        client.get("/contacts")
        sandbox.expire_tokens()
        client.get("/contacts")
    token = token_manager(sandbox_settings).access_token().value

    assert "refreshed" in caplog.text
    assert token not in caplog.text
    assert CLIENT_SECRET not in caplog.text
    assert REFRESH_TOKEN not in caplog.text
