"""The dashboard in a real headless Chromium, served by werkzeug on 127.0.0.1.

Needs the Debian package `chromium` at /usr/bin/chromium, a redis-server
for the retry queue, and the PostgreSQL server of the tests for the Zoho page.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from dashboard import create_app
from tests.services import free_port
from tests.zoho_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORGANIZATION_ID,
    REFRESH_TOKEN,
)
from tshjobs import queue, users
from tshjobs import settings as settings_module
from tshjobs.erp.db import init_schema
from tshjobs.erp.queries import ErpRepository
from tshjobs.erp.seed import seed_tiny
from tshjobs.settings import get_settings
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard.png"
ZOHO_SCREENSHOT = SCREENSHOT.with_name("zoho.png")
PASSWORD = "staff password 1"
XSS = "<script>alert(1)</script>"
BROKEN_TASK = "tests.sample_tasks.broken"
ADD_TASK = "tests.sample_tasks.add"

# Records CSP violations in the page, beside the console messages.
CSP_LISTENER = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def add_task(audit, name, args, state, error="") -> str:
    task_id = str(uuid.uuid4())
    audit.record_enqueued(task_id, name, args, {}, "tshjobs")
    if state == "queued":
        return task_id

    audit.record_started(task_id, "jobs-1", 3120, "Worker-1")
    if state == "succeeded":
        audit.record_succeeded(task_id)
    elif state == "failed":
        audit.record_failed(
            task_id, error, f"Traceback (most recent call last):\n{XSS}"
        )
    elif state != "running":
        audit.record_state(task_id, state)
    return task_id


@pytest.fixture
def settings(settings_env, redis_url, monkeypatch):
    monkeypatch.setenv("TSHJOBS_TASK_MODULES", "tests.sample_tasks")
    monkeypatch.setenv("TSHJOBS_REDIS_URL", redis_url)
    settings_module.reset_settings()
    return get_settings()


@pytest.fixture
def failed_task_id(settings):
    audit = queue.audit_log(settings)
    for number in range(3):
        add_task(audit, ADD_TASK, [number, 2], "succeeded")
    add_task(audit, "tasks.emails.send_order_confirmation_email", [1042], "running")
    add_task(audit, "tasks.zoho.sync_invoice", ["INV-7"], "expired")
    add_task(audit, ADD_TASK, [5, 5], "queued")
    return add_task(audit, BROKEN_TASK, [XSS], "failed", error=f"PermanentError: {XSS}")


@contextlib.contextmanager
def serve_dashboard(settings):
    """Serve the dashboard of `settings`, with the user alice, and yield its
    URL."""
    users.add_user(settings, "alice", PASSWORD)
    app = create_app(settings)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def base_url(settings):
    with serve_dashboard(settings) as url:
        yield url


@pytest.fixture
def zoho_settings(settings, pg_url, monkeypatch):
    """The settings of `settings` with Zoho Books against the local sandbox
    and a seeded PostgreSQL ERP."""
    init_schema(pg_url)
    seed_tiny(pg_url)
    with SandboxServer(SandboxConfig(window_seconds=1.0)) as sandbox:
        values = {
            "TSHJOBS_ERP_DATABASE_URL": pg_url,
            "TSHJOBS_ZOHO_ACCOUNTS_URL": sandbox.url,
            "TSHJOBS_ZOHO_CLIENT_ID": CLIENT_ID,
            "TSHJOBS_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
            "TSHJOBS_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN,
            "TSHJOBS_ZOHO_ORGANIZATION_ID": ORGANIZATION_ID,
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        settings_module.reset_settings()
        yield get_settings()


@pytest.fixture
def failed_sync_row(zoho_settings) -> int:
    """Mark the oldest zoho_sync_queue row failed, with an XSS string in its
    error, and return its id."""
    with ErpRepository(zoho_settings.erp_database_url) as erp:
        [item] = erp.claim_sync_batch(1)
        erp.mark_sync_failed(item.id, f"ZohoValidationError: {XSS}")
    return item.id


@pytest.fixture
def zoho_base_url(zoho_settings):
    with serve_dashboard(zoho_settings) as url:
        yield url


@pytest.fixture
def browser_page(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install the Debian package chromium")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.add_init_script(CSP_LISTENER)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(10_000)
        yield page
        context.close()


def watch_page(page) -> dict:
    seen = {"console": [], "dialogs": [], "errors": []}
    page.on("console", lambda message: seen["console"].append(message.text))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))

    def dismiss(dialog):
        seen["dialogs"].append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    return seen


def log_in(page, base_url):
    page.goto(f"{base_url}/tasks")
    page.wait_for_url("**/login**")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/tasks")


def csp_problems(page, seen) -> list[str]:
    violations = page.evaluate("window.cspViolations")
    console = [
        text
        for text in seen["console"]
        if "Content Security Policy" in text or "Refused to" in text
    ]
    return violations + console


def test_login_list_and_retry(browser_page, base_url, failed_task_id):
    page = browser_page
    seen = watch_page(page)

    log_in(page, base_url)

    failed_row = page.locator("tr.row-failed")
    assert failed_row.count() == 1
    assert failed_row.locator("td.error").inner_text() == f"PermanentError: {XSS}"
    assert failed_row.locator("td.args").inner_text() == f'"{XSS}"'
    assert page.locator("tr[class^=row-]").count() == 7
    assert "0 waiting" in page.locator(".queue-numbers").inner_text()

    # The table refreshes itself through HTMX, which needs no eval under CSP.
    with page.expect_response(
        lambda response: response.request.headers.get("hx-request") == "true",
        timeout=8_000,
    ):
        pass
    page.wait_for_selector("tr.row-failed")

    page.goto(f"{base_url}/tasks/{failed_task_id}")
    assert XSS in page.locator("pre.traceback").inner_text()
    assert page.locator("script:not([src])").count() == 0

    page.click("text=Retry this task")
    flash = page.locator(".flash-success")
    flash.wait_for()
    assert "queued again as task" in flash.inner_text()
    assert f"/tasks/{failed_task_id}" in page.locator(".fields").inner_html()
    new_task_path = page.url.removeprefix(base_url)

    # The retried task now links to its retry instead of offering the button.
    page.goto(f"{base_url}/tasks/{failed_task_id}")
    assert page.locator("button.retry").count() == 0
    note = page.locator(".retried-note")
    assert note.inner_text().startswith("Retried as ")
    assert note.locator("a").get_attribute("href") == new_task_path

    page.goto(f"{base_url}/tasks")
    page.locator("tr.row-queued").first.wait_for()
    assert "1 waiting" in page.locator(".queue-numbers").inner_text()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    assert seen["dialogs"] == []
    assert seen["errors"] == []
    assert csp_problems(page, seen) == []


def test_refresh_paused_while_hidden(browser_page, base_url, failed_task_id):
    page = browser_page
    seen = watch_page(page)
    log_in(page, base_url)
    polls = []
    page.on(
        "request",
        lambda request: (
            polls.append(request.url)
            if request.headers.get("hx-request") == "true"
            else None
        ),
    )

    page.evaluate(
        """() => {
          Object.defineProperty(document, "visibilityState",
                                {configurable: true, get: () => "hidden"});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    page.wait_for_timeout(6_000)
    assert polls == []

    with page.expect_request(
        lambda request: request.headers.get("hx-request") == "true", timeout=3_000
    ):
        page.evaluate(
            """() => {
              Object.defineProperty(document, "visibilityState",
                                    {configurable: true, get: () => "visible"});
              document.dispatchEvent(new Event("visibilitychange"));
            }"""
        )

    assert seen["errors"] == []
    assert csp_problems(page, seen) == []


def test_copied_cookie_dead_after_logout(browser_page, base_url):
    page = browser_page
    seen = watch_page(page)
    log_in(page, base_url)
    saved = page.context.cookies()
    assert [cookie["name"] for cookie in saved] == ["tshjobs_session"]

    page.click("button:has-text('Log out')")
    page.wait_for_url(f"{base_url}/login")
    page.context.clear_cookies()
    page.context.add_cookies(saved)
    page.goto(f"{base_url}/tasks")

    page.wait_for_url("**/login**")
    assert page.locator("#password").count() == 1
    assert seen["errors"] == []


def test_zoho_retry_leaves_failed_list(browser_page, zoho_base_url, failed_sync_row):
    page = browser_page
    seen = watch_page(page)
    log_in(page, zoho_base_url)

    page.click("nav.topnav >> text=Zoho Books")
    page.wait_for_url(f"{zoho_base_url}/zoho")
    row = page.locator(f"#sync-row-{failed_sync_row}")
    assert row.locator("td.error").inner_text() == f"ZohoValidationError: {XSS}"
    assert page.locator("tr.sync-row").count() == 1
    assert "1 failed" in page.locator(".sync-counts").inner_text()

    row.locator("button.retry").click()
    flash = page.locator(".flash-success")
    flash.wait_for()
    assert f"Row {failed_sync_row}" in flash.inner_text()
    assert page.locator(f"#sync-row-{failed_sync_row}").count() == 0
    assert page.locator("tr.sync-row").count() == 0
    assert "0 failed" in page.locator(".sync-counts").inner_text()
    ZOHO_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ZOHO_SCREENSHOT), full_page=True)

    assert seen["dialogs"] == []
    assert seen["errors"] == []
    assert csp_problems(page, seen) == []
