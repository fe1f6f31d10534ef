"""The Zoho Books sandbox's limits, faults, control API, state file and
command line, over real HTTP."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from tests.test_zoho_sandbox import (
    DEFAULTS,
    HTTP_TIMEOUT,
    BooksClient,
    parse,
    request_token,
)
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer


@pytest.fixture
def sandbox_default():
    """A sandbox whose "timeout" faults hold requests for 0.3 seconds."""
    with SandboxServer(SandboxConfig(fault_timeout_seconds=0.3)) as running:
        yield running


def sleep_until_next_window(window_seconds: float) -> None:
    """Sleep to just after the start of the next fixed rate window, so the
    requests that follow fall in one window."""
    now = time.time()
    start = math.floor(now / window_seconds + 1) * window_seconds
    time.sleep(start - now + 0.01)


def wait_for(condition, seconds: float = 10.0) -> None:
    """Poll condition() until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.01)


def call_in_thread(books: BooksClient, method: str, path: str, body=None):
    """Start the call in a thread; return (thread, outcome list)."""
    outcome = []

    def run():
        try:
            outcome.append(books.call(method, path, body))
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# Rate, daily and concurrency limits ------------------------------------------


def test_per_minute_limit_and_next_window():
    config = SandboxConfig(requests_per_minute=3, window_seconds=1.5)
    with SandboxServer(config) as sandbox:
        books = BooksClient(sandbox)
        sleep_until_next_window(config.window_seconds)
        within = [books.call("GET", "/contacts") for _ in range(3)]
        over = books.call("GET", "/contacts")
        sleep_until_next_window(config.window_seconds)
        next_window = books.call("GET", "/contacts")
        stats = sandbox.stats()

    assert [response.status_code for response in within] == [200, 200, 200]
    assert over.status_code == 429
    assert over.json()["code"] == 44
    assert "Retry-After" not in over.headers
    assert next_window.status_code == 200
    assert stats["rate_limited"] == 1
    assert 3 in stats["requests_per_window"]
    assert max(stats["requests_per_window"]) == 3


def test_daily_limit_with_rate_limit_headers():
    with SandboxServer(SandboxConfig(daily_limit=3)) as sandbox:
        books = BooksClient(sandbox)
        responses = [books.call("GET", "/contacts") for _ in range(4)]

    remaining = [r.headers["X-Rate-Limit-Remaining"] for r in responses]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert remaining == ["2", "1", "0", "0"]
    assert {r.headers["X-Rate-Limit-Limit"] for r in responses} == {"3"}
    assert 0 < int(responses[0].headers["X-Rate-Limit-Reset"]) <= 86400
    assert responses[3].json()["code"] == 45
    assert "maximum call rate limit of 3" in responses[3].json()["message"]


def test_rate_limit_headers_on_error_replies(sandbox_default):
    books = BooksClient(sandbox_default)

    response = books.call("GET", "/contacts/1")

    assert response.status_code == 404
    assert response.headers["X-Rate-Limit-Limit"] == "1000"


def test_rejected_requests_do_not_use_daily_quota():
    with SandboxServer(SandboxConfig(daily_limit=2)) as sandbox:
        books = BooksClient(sandbox)
        books.call("GET", "/contacts", params={"organization_id": "999"})
        unauthorised = BooksClient(sandbox, token="1000.not-issued")
        unauthorised.call("GET", "/contacts")
        response = books.call("GET", "/contacts")

    assert response.headers["X-Rate-Limit-Remaining"] == "1"


def test_concurrency_limit():
    config = SandboxConfig(max_concurrent=2, fault_timeout_seconds=2.0)
    with SandboxServer(config) as sandbox:
        books = BooksClient(sandbox)
        sandbox.inject("timeout", count=2)
        held_calls = [call_in_thread(books, "GET", "/contacts") for _ in range(2)]
        wait_for(lambda: sandbox.stats()["in_flight"] == 2)

        over = books.call("GET", "/contacts")
        for thread, _ in held_calls:
            thread.join()
        after = books.call("GET", "/contacts")
        stats = sandbox.stats()

    assert over.status_code == 429
    assert over.json()["code"] == 44
    assert after.status_code == 200
    assert stats["max_concurrent_seen"] == 2
    assert stats["in_flight"] == 0


def test_eight_workers_at_once(sandbox_default):
    books = BooksClient(sandbox_default)

    def create(number):
        return books.call("POST", "/contacts", {"contact_name": f"Parallel {number}"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(create, range(40)))

    ids = {response.json()["contact"]["contact_id"] for response in responses}
    assert [r.status_code for r in responses] == [201] * 40
    assert len(ids) == 40
    assert sandbox_default.count("contacts") == 40
    assert sandbox_default.stats()["max_concurrent_seen"] >= 1


def test_eight_workers_same_name_create_one(sandbox_default):
    books = BooksClient(sandbox_default)

    def create(_):
        return books.call("POST", "/contacts", {"contact_name": "Race Co"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(r.status_code for r in pool.map(create, range(8)))

    assert statuses == [201] + [400] * 7
    assert sandbox_default.count("contacts") == 1


# Faults ----------------------------------------------------------------------


def test_fault_500_then_normal(sandbox_default):
    books = BooksClient(sandbox_default)
    sandbox_default.inject("500", path="/contacts", method="POST")

    failed = books.call("POST", "/contacts", {"contact_name": "Fault Co"})
    retried = books.call("POST", "/contacts", {"contact_name": "Fault Co"})

    assert failed.status_code == 500
    assert failed.json() == {"code": 1000, "message": "Internal error"}
    assert retried.status_code == 201
    assert sandbox_default.count("contacts") == 1


def test_fault_narrowed_by_path_and_method(sandbox_default):
    books = BooksClient(sandbox_default)
    sandbox_default.inject("500", path="/items", method="POST")

    listing = books.call("GET", "/items")
    contact = books.call("POST", "/contacts", {"contact_name": "Untouched"})
    item = books.call("POST", "/items", {"name": "Hit", "rate": 1})

    assert listing.status_code == 200
    assert contact.status_code == 201
    assert item.status_code == 500
    assert sandbox_default.pending_faults() == []


def test_fault_429_counts(sandbox_default):
    books = BooksClient(sandbox_default)
    sandbox_default.inject("429", count=2)

    statuses = [books.call("GET", "/contacts").status_code for _ in range(3)]

    assert statuses == [429, 429, 200]
    assert sandbox_default.stats()["rate_limited"] == 2


def test_fault_timeout_drops_connection(sandbox_default):
    books = BooksClient(sandbox_default)
    sandbox_default.inject("timeout", path="/contacts", method="POST")

    with pytest.raises(requests.ConnectionError):
        books.call("POST", "/contacts", {"contact_name": "Never Stored"})
    after = books.call("GET", "/contacts")

    assert sandbox_default.count("contacts") == 0
    assert after.status_code == 200
    assert sandbox_default.stats()["dropped"] == 1


def test_fault_timeout_hits_client_read_timeout(sandbox_default):
    sandbox_default.set_config(fault_timeout_seconds=5)
    books = BooksClient(sandbox_default)
    sandbox_default.inject("timeout")

    with pytest.raises(requests.ReadTimeout):
        requests.get(
            f"{books.base}/contacts",
            params={"organization_id": books.organization_id},
            headers={"Authorization": f"Zoho-oauthtoken {books.token}"},
            timeout=0.2,
        )


def test_fault_timeout_holds_only_its_request(sandbox_default):
    sandbox_default.set_config(fault_timeout_seconds=5)
    books = BooksClient(sandbox_default)
    sandbox_default.inject("timeout", path="/items")
    thread, outcome = call_in_thread(books, "GET", "/items")
    wait_for(lambda: sandbox_default.stats()["in_flight"] == 1)

    other = books.call("GET", "/contacts")
    sandbox_default.stop()
    thread.join()

    assert other.status_code == 200
    assert isinstance(outcome[0], requests.ConnectionError)


def test_fault_commit_then_timeout_keeps_record(sandbox_default):
    books = BooksClient(sandbox_default)
    sandbox_default.inject("commit_then_timeout", path="/contacts", method="POST")

    with pytest.raises(requests.ConnectionError):
        books.call("POST", "/contacts", {"contact_name": "Committed Co"})
    retried = books.call("POST", "/contacts", {"contact_name": "Committed Co"})
    found = parse(
        books.call("GET", "/contacts", params={"contact_name": "Committed Co"})
    )

    assert sandbox_default.count("contacts") == 1
    assert retried.json()["code"] == 3062
    assert len(found["contacts"]) == 1


def test_fault_on_token_endpoint(sandbox_default):
    sandbox_default.inject("500", path="/oauth/v2/token")
    sandbox_default.inject("429", path="/oauth/v2/token")

    failed = request_token(sandbox_default)
    denied = request_token(sandbox_default)
    issued = request_token(sandbox_default)

    assert failed.status_code == 500
    assert denied.status_code == 400
    assert denied.json()["error"] == "Access Denied"
    assert "access_token" in issued.json()


def test_fault_without_path_spares_token_endpoint(sandbox_default):
    sandbox_default.inject("500")

    issued = request_token(sandbox_default)

    assert "access_token" in issued.json()
    assert len(sandbox_default.pending_faults()) == 1


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        ("404", {}),
        ("500", {"count": 0}),
        ("500", {"method": "PATCH"}),
        ("500", {"path": "x"}),
    ],
)
def test_inject_rejects_bad_arguments(sandbox_default, fault, options):
    with pytest.raises(ValueError):
        sandbox_default.inject(fault, **options)


def test_storm_429_then_recovery(sandbox_default):
    books = BooksClient(sandbox_default)

    sandbox_default.storm_429(1.5)
    during = [books.call("GET", "/contacts").status_code for _ in range(3)]
    time.sleep(1.6)
    after = books.call("GET", "/contacts")

    assert during == [429, 429, 429]
    assert after.status_code == 200
    assert sandbox_default.stats()["rate_limited"] == 3


# State file, reset and settings ----------------------------------------------


def test_state_survives_restart(tmp_path):
    config = SandboxConfig(state_path=tmp_path / "sandbox.db")
    with SandboxServer(config) as sandbox:
        books = BooksClient(sandbox)
        contact = books.contact("Persistent Co", erp_id="C-77")
        item = books.item(rate=Decimal("0.10"))
        invoice = books.invoice(
            contact["contact_id"], item["item_id"], [Decimal("0.10")] * 3
        )

    restarted_config = SandboxConfig(state_path=tmp_path / "sandbox.db")
    with SandboxServer(restarted_config) as sandbox:
        books = BooksClient(sandbox)
        fetched = parse(books.call("GET", f"/contacts/{contact['contact_id']}"))[
            "contact"
        ]
        stored = parse(books.call("GET", f"/invoices/{invoice['invoice_id']}"))[
            "invoice"
        ]
        duplicate = books.call("POST", "/contacts", {"contact_name": "persistent co"})
        second = books.invoice(contact["contact_id"], item["item_id"], [1])
        newer = books.contact("Newer Co")

    assert fetched == contact
    assert stored["total"] == Decimal("0.30")
    assert duplicate.json()["code"] == 3062
    assert second["invoice_number"] == "INV-000002"
    assert (
        int(newer["contact_id"])
        > int(second["invoice_id"])
        > int(invoice["invoice_id"])
    )


def test_reset_clears_records_counters_and_faults(tmp_path):
    with SandboxServer(SandboxConfig(state_path=tmp_path / "s.db")) as sandbox:
        books = BooksClient(sandbox)
        books.contact("Before Reset")
        sandbox.inject("500", count=5)
        sandbox.storm_429(60)
        sandbox.revoke_refresh_token()

        sandbox.reset()
        stats = sandbox.stats()
        after = books.call("GET", "/contacts")
        token_after = request_token(sandbox)

    with SandboxServer(SandboxConfig(state_path=tmp_path / "s.db")) as sandbox:
        count_after_restart = sandbox.count("contacts")

    assert stats["requests"] == 0
    assert stats["by_status"] == {}
    assert stats["token_requests"] == 0
    assert after.status_code == 200
    assert parse(after)["contacts"] == []
    assert "access_token" in token_after.json()
    assert count_after_restart == 0


def test_set_config_changes_limits_at_run_time(sandbox_default):
    books = BooksClient(sandbox_default)

    sandbox_default.set_config(daily_limit=1)
    first = books.call("GET", "/contacts")
    second = books.call("GET", "/contacts")

    assert first.status_code == 200
    assert second.status_code == 429


@pytest.mark.parametrize(
    "changes",
    [
        {"no_such_setting": 1},
        {"daily_limit": 0},
        {"time_zone": "Mars/Base"},
        {"state_path": "x"},
    ],
)
def test_set_config_rejects_bad_changes(sandbox_default, changes):
    with pytest.raises(ValueError):
        sandbox_default.set_config(**changes)


def test_records_rejects_unknown_entity(sandbox_default):
    with pytest.raises(ValueError):
        sandbox_default.records("journals")


# Control API over HTTP -------------------------------------------------------


def test_control_api(sandbox_default):
    control = f"{sandbox_default.url}/_sandbox"
    books = BooksClient(sandbox_default)
    books.contact("Control Co")

    injected = requests.post(
        f"{control}/inject",
        json={"fault": "500", "count": 2, "path": "/items", "method": "GET"},
        timeout=HTTP_TIMEOUT,
    )
    records = requests.get(f"{control}/records/contacts", timeout=HTTP_TIMEOUT).json()
    count = requests.get(f"{control}/count/contacts", timeout=HTTP_TIMEOUT).json()
    configured = requests.post(
        f"{control}/config", json={"daily_limit": 50}, timeout=HTTP_TIMEOUT
    ).json()
    stats = requests.get(f"{control}/stats", timeout=HTTP_TIMEOUT).json()
    bad = requests.post(
        f"{control}/inject", json={"fault": "teapot"}, timeout=HTTP_TIMEOUT
    )
    requests.post(f"{control}/expire_tokens", timeout=HTTP_TIMEOUT)
    expired = books.call("GET", "/contacts")
    requests.post(f"{control}/reset", timeout=HTTP_TIMEOUT)

    assert injected.json()["faults"][0]["remaining"] == 2
    assert [row["contact_name"] for row in records["records"]] == ["Control Co"]
    assert count == {"count": 1}
    assert configured["daily_limit"] == 50
    assert configured["client_secret"] == "***"
    assert configured["refresh_token"] == "***"
    assert stats["requests"] == 1
    assert stats["by_status"] == {"201": 1}
    assert bad.status_code == 400
    assert expired.status_code == 401
    assert sandbox_default.count("contacts") == 0


def test_control_calls_are_not_books_requests(sandbox_default):
    requests.get(f"{sandbox_default.url}/_sandbox/stats", timeout=HTTP_TIMEOUT)

    assert sandbox_default.stats()["requests"] == 0


def test_storm_and_revoke_over_http(sandbox_default):
    control = f"{sandbox_default.url}/_sandbox"
    books = BooksClient(sandbox_default)

    requests.post(f"{control}/storm_429", json={"seconds": 30}, timeout=HTTP_TIMEOUT)
    stormed = books.call("GET", "/contacts")
    requests.post(
        f"{control}/revoke_refresh_token",
        json={"revoke_access_tokens": True},
        timeout=HTTP_TIMEOUT,
    )
    refreshed = request_token(sandbox_default)

    assert stormed.status_code == 429
    assert refreshed.json() == {"error": "invalid_code"}
    assert sandbox_default.stats()["live_tokens"] == 0


# Command line ----------------------------------------------------------------


def test_command_line_serves_and_logs_without_secrets(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "tshjobs.zoho.sandbox", "--port", "0",
         "--state-file", str(tmp_path / "cli.db"), "--daily-limit", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        banner = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", banner).group(0)
        token = requests.post(
            f"{url}/oauth/v2/token",
            params={"grant_type": "refresh_token", "client_id": DEFAULTS.client_id,
                    "client_secret": DEFAULTS.client_secret,
                    "refresh_token": DEFAULTS.refresh_token},
            timeout=HTTP_TIMEOUT,
        ).json()["access_token"]  # fmt: skip
        books = {
            "params": {"organization_id": DEFAULTS.organization_id},
            "headers": {"Authorization": f"Zoho-oauthtoken {token}"},
            "timeout": HTTP_TIMEOUT,
        }
        response = requests.get(f"{url}/books/v3/contacts", **books)
        requests.post(
            f"{url}/_sandbox/inject",
            json={"fault": "500", "path": "/items"},
            timeout=HTTP_TIMEOUT,
        )
        faulted = requests.get(f"{url}/books/v3/items", **books)
    finally:
        process.send_signal(signal.SIGINT)
        _, log = process.communicate(timeout=HTTP_TIMEOUT)

    assert response.status_code == 200
    assert response.headers["X-Rate-Limit-Limit"] == "7"
    assert faulted.status_code == 500
    assert process.returncode == 0
    assert re.search(r"POST /oauth/v2/token 200 [\d.]+ ms", log)
    assert re.search(r"GET /books/v3/contacts 200 [\d.]+ ms\n", log)
    assert re.search(r"GET /books/v3/items 500 [\d.]+ ms \(injected fault 500\)", log)
    assert token not in log
    assert DEFAULTS.client_secret not in log
    assert DEFAULTS.refresh_token not in log


def test_cli_command_is_registered():
    from click.testing import CliRunner

    from tshjobs.cli import main

    result = CliRunner().invoke(main, ["zoho-sandbox", "--help"])

    assert result.exit_code == 0
    assert "--requests-per-minute" in result.output
    assert "--state-file" in result.output
