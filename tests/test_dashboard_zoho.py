"""The Zoho Books page through Flask's test client, on a real Redis queue, a
seeded PostgreSQL ERP and the local Zoho sandbox as the accounts server."""

from __future__ import annotations

import json
import re

import pytest

from dashboard import create_app
from tests.services import free_port
from tests.test_dashboard import ESCAPED_XSS, PASSWORD, XSS, csrf_from, login
from tests.zoho_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
    client_for,
)
from tshjobs import queue, users
from tshjobs import settings as settings_module
from tshjobs.erp.db import init_schema
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.seed import seed_tiny
from tshjobs.errors import ZohoDailyLimitReached, ZohoReauthorizationRequired
from tshjobs.settings import get_settings
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer
from tshjobs.zoho.tokens import token_manager

ZOHO_ENV = {
    "TSHJOBS_ZOHO_CLIENT_ID": CLIENT_ID,
    "TSHJOBS_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
    "TSHJOBS_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN,
    "TSHJOBS_ZOHO_ORGANIZATION_ID": ORGANIZATION_ID,
    "TSHJOBS_ZOHO_PLAN": "standard",
    "TSHJOBS_ZOHO_TIMEOUT": "5",
}
SYNC_ERROR = f"C-1: ZohoValidationError: {XSS}"


@pytest.fixture
def sandbox():
    config = SandboxConfig(window_seconds=1.0, fault_timeout_seconds=0.5)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def erp_url(pg_url):
    """A seeded ERP whose zoho_sync_queue has 8 pending rows: the 2 of the
    tiny seed, 4 customers and 2 products."""
    init_schema(pg_url)
    seed_tiny(pg_url)
    with ErpRepository(pg_url) as erp:
        for customer_id in range(1, 5):
            erp.enqueue_sync("customer", customer_id)
        for product_id in range(1, 3):
            erp.enqueue_sync("product", product_id)
        assert erp.count_sync_rows()["pending"] == 8
    return pg_url


def apply_env(monkeypatch, values: dict[str, str]):
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings_module.reset_settings()
    return get_settings()


@pytest.fixture
def base_values(settings_env, redis_url, erp_url) -> dict[str, str]:
    return {
        "TSHJOBS_TASK_MODULES": "tasks",
        "TSHJOBS_REDIS_URL": redis_url,
        "TSHJOBS_ERP_DATABASE_URL": erp_url,
    }


@pytest.fixture
def settings(base_values, sandbox, monkeypatch):
    values = {**base_values, **ZOHO_ENV, "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url}
    return apply_env(monkeypatch, values)


def logged_in_client(settings):
    users.add_user(settings, "alice", PASSWORD)
    client = create_app(settings, {"TESTING": True}).test_client()
    assert login(client, "alice", PASSWORD).status_code == 302
    return client


@pytest.fixture
def client(settings):
    return logged_in_client(settings)


def fail_rows(settings, count: int, error: str = SYNC_ERROR) -> list:
    """Claim `count` pending rows and mark them failed with `error`."""
    with ErpRepository(settings.erp_database_url) as erp:
        items = erp.claim_sync_batch(count)
        for item in items:
            erp.mark_sync_failed(item.id, error)
    assert len(items) == count
    return items


def sync_row(settings, queue_id: int):
    with ErpRepository(settings.erp_database_url) as erp:
        return erp.get_sync_row(queue_id)


def sync_counts(settings) -> dict[str, int]:
    with ErpRepository(settings.erp_database_url) as erp:
        return erp.count_sync_rows()


def shown_counts(html: str) -> dict[str, int]:
    pattern = r'sync-status-(\w+)"><span class="count-number">(\d+)<'
    return {status: int(number) for status, number in re.findall(pattern, html)}


def shown_row_ids(html: str) -> list[int]:
    return [int(text) for text in re.findall(r'id="sync-row-(\d+)"', html)]


def page_text(client, path="/zoho", htmx=False) -> str:
    headers = {"HX-Request": "true"} if htmx else {}
    response = client.get(path, headers=headers)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def post(client, path: str, token: str | None = None):
    data = {"csrf_token": token} if token is not None else {}
    return client.post(path, data=data)


# Login and layout


def test_zoho_page_requires_login(settings):
    client = create_app(settings, {"TESTING": True}).test_client()

    for response in (
        client.get("/zoho"),
        client.post("/zoho/rows/1/retry"),
        client.post("/zoho/sync-pending"),
    ):
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login")

    htmx = client.get("/zoho", headers={"HX-Request": "true"})
    assert htmx.status_code == 401
    assert htmx.headers["HX-Redirect"] == "/login"


def test_navigation_links_zoho_page(client):
    assert 'href="/zoho">Zoho Books</a>' in page_text(client, "/tasks")


def test_page_shows_configuration(client):
    html = page_text(client)

    assert "configured</span>" in html
    assert ORGANIZATION_ID in html
    assert "127.0.0.1" in html
    assert "2000 calls a day" in html
    assert "Sync pending now" in html


def test_page_shows_counts(client, settings):
    fail_rows(settings, 2)

    html = page_text(client)

    assert shown_counts(html) == sync_counts(settings)
    assert shown_counts(html)["failed"] == 2
    assert shown_counts(html)["pending"] == 6


def test_htmx_gets_polling_fragment(client, settings):
    fail_rows(settings, 1)

    fragment = page_text(client, htmx=True)
    page = page_text(client)

    assert fragment.lstrip().startswith('<div id="zoho-live"')
    assert 'hx-trigger="every 5s, refresh"' in fragment
    assert "data-poll" in fragment
    assert "<html" not in fragment
    assert shown_counts(fragment) == shown_counts(page)
    assert '<div id="zoho-live"' in page


def test_failed_rows_listed_escaped(client, settings):
    items = fail_rows(settings, 2)

    html = page_text(client)

    assert shown_row_ids(html) == sorted((item.id for item in items), reverse=True)
    assert ESCAPED_XSS in html
    assert XSS not in html
    first = html[html.index(f'id="sync-row-{items[0].id}"') :]
    row = first[: first.index("</tr>")]
    assert f"<td>{items[0].entity_type}</td>" in row
    assert f'<td class="num">{items[0].entity_id}</td>' in row
    assert '<td class="num">1</td>' in row
    assert f'action="/zoho/rows/{items[0].id}/retry"' in row


def test_no_failed_rows_message(client):
    assert "No failed rows." in page_text(client)


# Retry and sync pending


def test_retry_requires_csrf(client, settings):
    [item] = fail_rows(settings, 1)

    missing = post(client, f"/zoho/rows/{item.id}/retry")
    wrong = post(client, f"/zoho/rows/{item.id}/retry", "not-the-token")

    assert missing.status_code == 400
    assert wrong.status_code == 400
    assert sync_row(settings, item.id).status == "failed"
    assert queue.queue_length(settings) == 0
    assert queue.audit_log(settings).actions() == []


def test_retry_sets_pending_and_enqueues(client, settings):
    [item] = fail_rows(settings, 1)
    token = csrf_from(page_text(client))

    response = post(client, f"/zoho/rows/{item.id}/retry", token)

    assert response.status_code == 302
    assert response.headers["Location"] == "/zoho"
    row = sync_row(settings, item.id)
    assert row.status == "pending"
    assert row.last_error == SYNC_ERROR
    assert queue.queue_length(settings) == 1

    audit = queue.audit_log(settings)
    [action] = audit.actions()
    assert action["username"] == "alice"
    assert action["action"] == "zoho-retry"
    assert f"zoho_sync_queue row {item.id}" in action["detail"]
    task = audit.get(action["task_id"])
    assert task["name"] == f"tasks.zoho.sync_{item.entity_type}"
    assert json.loads(task["args"]) == [item.entity_id]
    assert json.loads(task["kwargs"]) == {"queue_id": item.id}

    html = page_text(client)
    assert f"its sync was queued as task {action['task_id']}" in html
    assert item.id not in shown_row_ids(html)


def test_second_retry_queues_nothing(client, settings):
    [item] = fail_rows(settings, 1)
    token = csrf_from(page_text(client))

    post(client, f"/zoho/rows/{item.id}/retry", token)
    again = post(client, f"/zoho/rows/{item.id}/retry", token)

    assert again.status_code == 302
    assert queue.queue_length(settings) == 1
    assert len(queue.audit_log(settings).actions()) == 1
    assert f"Row {item.id} is not failed any more" in page_text(client)


def test_retry_unknown_row(client, settings):
    token = csrf_from(page_text(client))

    response = post(client, "/zoho/rows/987654/retry", token)

    assert response.status_code == 302
    assert "Row 987654 is not in the zoho_sync_queue table." in page_text(client)
    assert queue.queue_length(settings) == 0


def test_sync_pending_now_enqueues(client, settings):
    token = csrf_from(page_text(client))

    response = post(client, "/zoho/sync-pending", token)

    assert response.status_code == 302
    assert queue.queue_length(settings) == 1
    audit = queue.audit_log(settings)
    [action] = audit.actions()
    assert action["username"] == "alice"
    assert action["action"] == "zoho-sync-pending"
    assert audit.get(action["task_id"])["name"] == "tasks.zoho.sync_all_pending"
    assert "zoho-sync-pending" in page_text(client, "/actions")


def test_sync_pending_requires_csrf(client, settings):
    assert post(client, "/zoho/sync-pending").status_code == 400
    assert queue.queue_length(settings) == 0


def test_not_configured_queues_nothing(base_values, monkeypatch):
    settings = apply_env(monkeypatch, base_values)
    client = logged_in_client(settings)
    [item] = fail_rows(settings, 1)
    html = page_text(client)
    token = csrf_from(html)

    retried = post(client, f"/zoho/rows/{item.id}/retry", token)
    synced = post(client, "/zoho/sync-pending", token)

    assert "not configured</span>" in html
    assert "TSHJOBS_ZOHO_CLIENT_ID is empty." in html
    assert "sync-pending" not in html
    assert f'action="/zoho/rows/{item.id}/retry"' not in html
    assert shown_row_ids(html) == [item.id]
    assert retried.status_code == 302
    assert synced.status_code == 302
    assert "Nothing was queued: Zoho Books is not configured." in page_text(client)
    assert sync_row(settings, item.id).status == "failed"
    assert queue.queue_length(settings) == 0


# Token and rate limit status


def test_reauthorization_message_shown(client, settings, sandbox):
    sandbox.revoke_refresh_token()
    with pytest.raises(ZohoReauthorizationRequired):
        token_manager(settings).access_token()

    html = page_text(client)
    main_page = page_text(client, "/tasks")

    assert "Zoho Books needs re-authorisation" in html
    assert "create a new refresh token" in html
    assert "API console" in html
    assert "<code>TSHJOBS_ZOHO_REFRESH_TOKEN</code>" in html
    assert "systemctl restart tshjobs.target" in html
    assert "invalid_code" in html
    assert 'class="zoho-alert"' in main_page
    assert '<a href="/zoho">Zoho Books needs re-authorisation' in main_page


def test_daily_cap_message_shown(client, settings, sandbox):
    sandbox.set_config(daily_limit=2)
    with client_for(settings) as zoho:
        zoho.get("/contacts")
        zoho.get("/contacts")
        with pytest.raises(ZohoDailyLimitReached):
            zoho.get("/contacts")

    html = page_text(client)
    main_page = page_text(client, "/tasks")

    cap = re.search(
        r"Daily Zoho limit reached, sync resumes at "
        r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\.",
        html,
    )
    assert cap, "no daily cap message on the Zoho page"
    assert "zoho-daily-cap" in html
    assert "0 remaining" in html
    assert f'<a href="/zoho">Daily Zoho limit reached, sync resumes at {cap[1]}' in (
        main_page
    )


def test_main_page_quiet_when_zoho_fine(client):
    assert "zoho-alert" not in page_text(client, "/tasks")


def test_token_times_shown(client, settings):
    token_manager(settings).access_token()

    html = page_text(client)

    assert "stored</span>" in html
    assert "none fetched yet" not in html


# Outages and secrets


def test_redis_down_shows_message(base_values, sandbox, monkeypatch):
    port = free_port()
    values = {
        **base_values,
        **ZOHO_ENV,
        "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url,
        "TSHJOBS_REDIS_URL": f"redis://:redis-pw-7@127.0.0.1:{port}/0",
    }
    settings = apply_env(monkeypatch, values)
    client = logged_in_client(settings)

    html = page_text(client)
    fragment = page_text(client, htmx=True)
    main_page = page_text(client, "/tasks")

    assert "The shared Zoho store cannot be read (ConnectionError)" in html
    assert "The shared Zoho store cannot be read (ConnectionError)" in fragment
    assert shown_counts(html) == sync_counts(settings)
    assert "Queue storage unreachable" in main_page
    for body in (html, fragment, main_page):
        assert "redis-pw-7" not in body
        assert str(port) not in body


def test_erp_down_shows_message(base_values, sandbox, monkeypatch):
    port = free_port()
    values = {
        **base_values,
        **ZOHO_ENV,
        "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url,
        "TSHJOBS_ERP_DATABASE_URL": f"postgresql://erp:pg-pw-9@127.0.0.1:{port}/erp",
    }
    settings = apply_env(monkeypatch, values)
    client = logged_in_client(settings)
    html = page_text(client)

    retried = post(client, "/zoho/rows/1/retry", csrf_from(html))
    after = page_text(client)

    assert "The ERP database cannot be read (ErpUnavailable)" in html
    assert retried.status_code == 302
    assert "Retry failed: the ERP database cannot be reached." in after
    assert queue.queue_length(settings) == 0
    for body in (html, after):
        assert "pg-pw-9" not in body
        assert str(port) not in body


def test_no_secret_in_pages(client, settings, sandbox):
    access_token = token_manager(settings).access_token().value
    fail_rows(settings, 1)

    bodies = [
        page_text(client),
        page_text(client, htmx=True),
        page_text(client, "/tasks"),
    ]

    secrets = (CLIENT_SECRET, REFRESH_TOKEN, access_token, settings.secret_key)
    for body in bodies:
        for secret in secrets:
            assert secret not in body
        assert settings.redis_url not in body
        assert settings.erp_database_url not in body
        assert sandbox.url not in body
