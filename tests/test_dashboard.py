"""The dashboard through Flask's test client, on a real SQLite audit log and,
for retries and health, a real Redis queue."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import threading
import time
import uuid

import pytest

import tests.sample_tasks  # noqa: F401 - registers the tasks enqueued by name
from dashboard import auth, create_app
from dashboard.ratelimit import LoginThrottle
from dashboard.security import is_safe_redirect
from tests.services import free_port
from tshjobs import queue, users
from tshjobs.audit import AuditRetryBuffer, retry_buffer_path
from tshjobs.settings import get_settings
from tshjobs.spool import TaskSpool, spool_path

PASSWORD = "staff password 1"
XSS = "<script>alert(1)</script>"
ESCAPED_XSS = "&lt;script&gt;alert(1)&lt;/script&gt;"
BROKEN_TASK = "tests.sample_tasks.broken"
ADD_TASK = "tests.sample_tasks.add"
AUDIT_OK = {
    "ok": True,
    "writes_pending": 0,
    "oldest_pending_at": None,
    "last_write_error_at": None,
}


@pytest.fixture
def env(settings_env, monkeypatch):
    monkeypatch.setenv("TSHJOBS_TASK_MODULES", "tests.sample_tasks")
    return settings_env


@pytest.fixture
def settings(env):
    return get_settings()


@pytest.fixture
def redis_settings(env, redis_url, monkeypatch):
    from tshjobs import settings as settings_module

    monkeypatch.setenv("TSHJOBS_REDIS_URL", redis_url)
    settings_module.reset_settings()
    return get_settings()


@pytest.fixture
def app(settings):
    users.add_user(settings, "alice", PASSWORD)
    return create_app(settings, {"TESTING": True})


@pytest.fixture
def audit(settings):
    return queue.audit_log(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def logged_in(client):
    response = login(client, "alice", PASSWORD)
    assert response.status_code == 302
    return client


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client, username, password, **extra):
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    form = {"username": username, "password": password, "csrf_token": token}
    form.update(extra)
    return client.post("/login", data=form)


def page_token(client, path="/tasks") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


def add_task(audit, name=ADD_TASK, args=(1, 2), kwargs=None, state="succeeded",
             error="", traceback="", retry_of=None) -> str:  # fmt: skip
    task_id = str(uuid.uuid4())
    audit.record_enqueued(task_id, name, list(args), kwargs or {}, "tshjobs", retry_of)
    if state == "queued":
        return task_id

    audit.record_started(task_id, "worker-host", 4242, "Worker-1")
    if state == "succeeded":
        audit.record_succeeded(task_id, result="done")
    elif state == "failed":
        audit.record_failed(task_id, error or "PermanentError: no", traceback)
    elif state != "running":
        audit.record_state(task_id, state)
    return task_id


def row_count(html: str) -> int:
    return len(re.findall(r'<tr class="row-', html))


def shown_ids(html: str) -> list[str]:
    return re.findall(r'<span class="task-id">([^<]+)</span>', html)


def session_rows(settings) -> list[dict]:
    conn = sqlite3.connect(settings.state_path)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM dashboard_sessions ORDER BY created_at")
    result = [dict(row) for row in rows]
    conn.close()
    return result


def cookie_session_id(app, client) -> str:
    """Decode the signed session cookie and return flask-login's user id."""
    cookie = client.get_cookie("tshjobs_session")
    serializer = app.session_interface.get_signing_serializer(app)
    return serializer.loads(cookie.value)["_user_id"]


def client_with_cookie(app, value: str):
    client = app.test_client()
    client.set_cookie("tshjobs_session", value)
    return client


# Login and sessions


def test_every_page_requires_login(app, client):
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in auth.PUBLIC_ENDPOINTS:
            continue

        path = rule.rule.replace("<task_id>", "some-task")
        if "GET" in rule.methods:
            response = client.get(path)
        else:
            response = client.post(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login"), path
        checked += 1

    assert checked >= 5


def test_public_paths_need_no_login(client):
    assert client.get("/login").status_code == 200
    assert client.get("/health").status_code in (200, 503)
    assert client.get("/static/dashboard.css").status_code == 200
    assert client.get("/static/vendor/htmx/htmx.min.js").status_code == 200


def test_login_page_hints_user_add(settings):
    app = create_app(settings, {"TESTING": True})

    page = app.test_client().get("/login").get_data(as_text=True)
    assert "tshjobs user add NAME" in page

    users.add_user(settings, "alice", PASSWORD)
    page = app.test_client().get("/login").get_data(as_text=True)
    assert "tshjobs user add NAME" not in page


def test_login_and_logout(client):
    response = login(client, "alice", PASSWORD)
    assert response.status_code == 302
    assert response.headers["Location"] == "/tasks"
    assert client.get("/tasks").status_code == 200

    assert client.get("/logout").status_code == 405
    response = client.post("/logout", data={"csrf_token": page_token(client)})
    assert response.status_code == 302
    assert client.get("/tasks").status_code == 302


def test_wrong_password_rejected(client):
    response = login(client, "alice", "not the password")

    assert response.status_code == 401
    assert "Invalid username or password." in response.get_data(as_text=True)
    assert client.get("/tasks").status_code == 302


def test_unknown_user_same_message(client):
    response = login(client, "mallory", PASSWORD)

    assert response.status_code == 401
    assert "Invalid username or password." in response.get_data(as_text=True)


def test_login_rate_limited(app):
    client = app.test_client()
    for _ in range(10):
        assert login(client, "alice", "wrong password").status_code == 401

    response = login(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed logins" in response.get_data(as_text=True)
    assert client.get("/tasks").status_code == 302

    other_address = app.test_client()
    other_address.environ_base["REMOTE_ADDR"] = "127.0.0.2"
    assert login(other_address, "alice", PASSWORD).status_code == 302


def test_rate_limit_per_username(app, settings):
    users.add_user(settings, "bob", PASSWORD)
    client = app.test_client()
    for _ in range(10):
        login(client, "alice", "wrong password")

    assert login(client, "ALICE", PASSWORD).status_code == 429
    assert login(client, "bob", PASSWORD).status_code == 302


def test_success_resets_failures(app):
    client = app.test_client()
    for _ in range(9):
        login(client, "alice", "wrong password")
    assert login(client, "alice", PASSWORD).status_code == 302

    fresh = app.test_client()
    for _ in range(9):
        login(fresh, "alice", "wrong password")
    assert login(fresh, "alice", PASSWORD).status_code == 302


def test_parallel_wrong_logins_hit_exact_limit(app, settings):
    clients = []
    for _ in range(40):
        client = app.test_client()
        token = page_token(client, "/login")
        clients.append((client, token))
    barrier = threading.Barrier(len(clients))
    statuses = []

    def wrong_login(client, token):
        form = {"username": "alice", "password": "wrong password", "csrf_token": token}
        barrier.wait()
        statuses.append(client.post("/login", data=form).status_code)

    threads = [threading.Thread(target=wrong_login, args=pair) for pair in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(statuses) == 40
    assert statuses.count(401) == 10
    assert statuses.count(429) == 30
    conn = sqlite3.connect(settings.state_path)
    (recorded,) = conn.execute(
        "SELECT count(*) FROM dashboard_login_failures"
    ).fetchone()
    conn.close()
    assert recorded == 10


def test_throttle_counts_parallel_attempts_exactly(tmp_path):
    throttle = LoginThrottle(tmp_path / "state.db", max_failures=10, window=600.0)
    key = throttle.key("alice", "127.0.0.1")
    barrier = threading.Barrier(40)
    waits = []

    def attempt():
        barrier.wait()
        waits.append(throttle.record_attempt(key))

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(waits) == 40
    assert waits.count(0) == 10
    assert all(0 < wait <= 600 for wait in waits if wait)


def test_throttle_reset_allows_new_attempts(tmp_path):
    throttle = LoginThrottle(tmp_path / "state.db", max_failures=2, window=600.0)
    key = throttle.key("alice", "127.0.0.1")

    assert throttle.record_attempt(key) == 0
    assert throttle.record_attempt(key) == 0
    assert throttle.record_attempt(key) > 0

    throttle.reset(key)

    assert throttle.record_attempt(key) == 0


def test_login_redirects_to_next(client):
    response = login(client, "alice", PASSWORD, next="/actions")
    assert response.headers["Location"] == "/actions"


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", ""]
)
def test_login_ignores_foreign_next(client, target):
    response = login(client, "alice", PASSWORD, next=target)
    assert response.headers["Location"] == "/tasks"


@pytest.mark.parametrize(
    "target",
    [
        "/tasks\r\nSet-Cookie: injected=1",
        "/tasks\n",
        "/tasks\r",
        "/\t/evil.example",
        "/\n/evil.example",
        "/tasks\x00",
        "/tasks\x7f",
        "/tasks\x85",
        "/tasks\u2028",
        "/tasks\u202e",
    ],
)
def test_login_ignores_next_with_controls(client, target):
    response = login(client, "alice", PASSWORD, next=target)

    assert response.status_code == 302
    assert response.headers["Location"] == "/tasks"
    assert "injected" not in response.headers.get("Set-Cookie", "")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/tasks", True),
        ("/tasks/3f2a?state=failed&q=a b", True),
        ("/tasks/\u0639\u0631\u0628\u064a", True),
        ("/tasks\r\nLocation: //evil.example", False),
        ("/\t/evil.example", False),
        ("//evil.example", False),
        ("https://evil.example/", False),
        ("/\\evil.example", False),
        ("tasks", False),
        ("", False),
        (None, False),
    ],
)
def test_is_safe_redirect(target, expected):
    assert is_safe_redirect(target) is expected


def test_password_change_ends_session(logged_in, settings):
    assert logged_in.get("/tasks").status_code == 200

    users.set_password(settings, "alice", "another password")

    assert logged_in.get("/tasks").status_code == 302


def test_deleted_user_logged_out(logged_in, settings):
    users.delete_user(settings, "alice")

    assert logged_in.get("/tasks").status_code == 302


def test_cookie_replay_after_logout(app, logged_in):
    saved = logged_in.get_cookie("tshjobs_session").value
    assert client_with_cookie(app, saved).get("/tasks").status_code == 200

    response = logged_in.post("/logout", data={"csrf_token": page_token(logged_in)})
    assert response.status_code == 302

    replayed = client_with_cookie(app, saved).get("/tasks")
    assert replayed.status_code == 302
    assert replayed.headers["Location"].startswith("/login")


def test_logout_ends_only_that_session(app, logged_in):
    other = app.test_client()
    assert login(other, "alice", PASSWORD).status_code == 302

    logged_in.post("/logout", data={"csrf_token": page_token(logged_in)})

    assert logged_in.get("/tasks").status_code == 302
    assert other.get("/tasks").status_code == 200


def test_session_stored_server_side(app, logged_in, settings):
    session_id = cookie_session_id(app, logged_in)
    rows = session_rows(settings)

    assert len(rows) == 1
    assert rows[0]["username"] == "alice"
    assert rows[0]["revoked_at"] is None
    assert rows[0]["created_at"] <= rows[0]["last_seen_at"] <= time.time()
    # The table keeps a hash, so a copy of the database yields no cookie.
    assert rows[0]["id_hash"] == hashlib.sha256(session_id.encode()).hexdigest()
    assert "alice" not in session_id
    assert len(session_id) >= 43


def test_logout_marks_session_revoked(logged_in, settings):
    logged_in.post("/logout", data={"csrf_token": page_token(logged_in)})

    rows = session_rows(settings)
    assert len(rows) == 1
    assert rows[0]["revoked_at"] is not None


def test_login_starts_new_session_id(app, client):
    login(client, "alice", PASSWORD)
    first = cookie_session_id(app, client)

    client.post("/logout", data={"csrf_token": page_token(client)})
    login(client, "alice", PASSWORD)
    second = cookie_session_id(app, client)

    assert second != first


def test_password_change_revokes_cookie_copy(app, logged_in, settings):
    saved = logged_in.get_cookie("tshjobs_session").value

    users.set_password(settings, "alice", "another password")

    assert client_with_cookie(app, saved).get("/tasks").status_code == 302
    assert all(row["revoked_at"] for row in session_rows(settings))


def test_readded_user_needs_new_login(app, logged_in, settings):
    saved = logged_in.get_cookie("tshjobs_session").value

    users.delete_user(settings, "alice")
    users.add_user(settings, "alice", PASSWORD)

    assert client_with_cookie(app, saved).get("/tasks").status_code == 302


def test_revoke_sessions_logs_user_out(app, logged_in, settings):
    other = app.test_client()
    login(other, "alice", PASSWORD)

    assert users.revoke_sessions(settings, "ALICE") == 2

    assert logged_in.get("/tasks").status_code == 302
    assert other.get("/tasks").status_code == 302


def test_expired_session_rejected_and_pruned(app, logged_in, settings):
    twelve_hours_ago = time.time() - 12 * 3600 - 1
    conn = sqlite3.connect(settings.state_path)
    conn.execute("UPDATE dashboard_sessions SET created_at = ?", [twelve_hours_ago])
    conn.commit()
    conn.close()

    assert logged_in.get("/tasks").status_code == 302

    fresh = app.test_client()
    assert login(fresh, "alice", PASSWORD).status_code == 302
    rows = session_rows(settings)
    assert len(rows) == 1
    assert rows[0]["created_at"] > twelve_hours_ago + 12 * 3600


def test_forged_session_id_rejected(app, client):
    serializer = app.session_interface.get_signing_serializer(app)
    for user_id in ("alice", "alice:" + "0" * 32, "x" * 43, ""):
        cookie = serializer.dumps({"_user_id": user_id, "_fresh": True})
        response = client_with_cookie(app, cookie).get("/tasks")
        assert response.status_code == 302, user_id


def test_session_key_derived_from_secret(app, settings):
    expected = hmac.new(
        settings.secret_key.encode(), b"dashboard-session", hashlib.sha256
    ).hexdigest()

    assert app.secret_key == expected
    assert app.secret_key != settings.secret_key


def test_session_cookie_flags(client):
    client.get("/login")
    cookie = client.get_cookie("tshjobs_session")

    assert cookie is not None
    assert cookie.http_only
    assert cookie.same_site == "Lax"
    assert not cookie.secure


def test_secure_cookie_configurable(settings):
    app = create_app(settings, {"TESTING": True, "SESSION_COOKIE_SECURE": True})
    response = app.test_client().get("/login")

    assert "Secure" in response.headers["Set-Cookie"]


def test_secure_cookie_setting(env, monkeypatch):
    from tshjobs import settings as settings_module

    monkeypatch.setenv("TSHJOBS_DASHBOARD_SECURE_COOKIES", "true")
    settings_module.reset_settings()
    app = create_app(get_settings(), {"TESTING": True})

    response = app.test_client().get("/login")

    assert "Secure" in response.headers["Set-Cookie"]


def test_htmx_request_without_login(client):
    response = client.get("/tasks", headers={"HX-Request": "true"})

    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login"


# CSRF, origin and headers


def test_login_without_csrf_token(client):
    response = client.post("/login", data={"username": "alice", "password": PASSWORD})

    assert response.status_code == 400


def test_post_without_csrf_token(logged_in, audit):
    task_id = add_task(audit, state="failed")

    response = logged_in.post(f"/tasks/{task_id}/retry")

    assert response.status_code == 400
    assert audit.get(task_id)["retried_by"] is None


def test_post_with_wrong_csrf_token(logged_in, audit):
    task_id = add_task(audit, state="failed")

    response = logged_in.post(f"/tasks/{task_id}/retry", data={"csrf_token": "x" * 43})

    assert response.status_code == 400
    assert audit.get(task_id)["retried_by"] is None


def test_csrf_token_in_header(logged_in):
    token = page_token(logged_in)

    response = logged_in.post("/logout", headers={"X-CSRF-Token": token})

    assert response.status_code == 302


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
        {"Referer": "http://evil.example/page"},
    ],
)
def test_cross_origin_post_rejected(logged_in, headers):
    token = page_token(logged_in)

    response = logged_in.post("/logout", data={"csrf_token": token}, headers=headers)

    assert response.status_code == 403
    assert logged_in.get("/tasks").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://localhost"},
        {"Origin": "https://localhost"},
        {"Referer": "http://localhost/tasks"},
    ],
)
def test_same_origin_post_accepted(logged_in, headers):
    token = page_token(logged_in)

    response = logged_in.post("/logout", data={"csrf_token": token}, headers=headers)

    assert response.status_code == 302


def test_security_headers(logged_in):
    response = logged_in.get("/tasks")
    csp = response.headers["Content-Security-Policy"]

    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"


def test_pages_have_no_inline_script(app, logged_in, audit):
    task_id = add_task(audit, state="failed")
    pages = {"/login": app.test_client().get("/login").get_data(as_text=True)}
    for path in ("/tasks", f"/tasks/{task_id}", "/actions", "/tasks/missing"):
        pages[path] = logged_in.get(path).get_data(as_text=True)

    for path, html in pages.items():
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html, path
        assert not re.search(r"<[^>]+\son\w+=", html), path
        assert "includeIndicatorStyles" in html, path


# Task list


def test_list_shows_tasks_and_counts(logged_in, audit):
    add_task(audit, state="succeeded")
    add_task(audit, state="succeeded")
    add_task(audit, BROKEN_TASK, ["bad"], state="failed")

    html = logged_in.get("/tasks").get_data(as_text=True)

    assert row_count(html) == 3
    assert re.search(r'count-number">2</span> succeeded', html)
    assert re.search(r'count-number">1</span> failed', html)
    assert re.search(r"<strong>0</strong> waiting", html)
    assert BROKEN_TASK in html


def test_root_is_task_list(logged_in, audit):
    add_task(audit)

    html = logged_in.get("/").get_data(as_text=True)

    assert row_count(html) == 1


def test_filter_by_state(logged_in, audit):
    add_task(audit, state="succeeded")
    failed = add_task(audit, state="failed")

    html = logged_in.get("/tasks?state=failed").get_data(as_text=True)

    assert row_count(html) == 1
    assert failed in html


def test_unknown_state_filter_ignored(logged_in, audit):
    add_task(audit, state="succeeded")
    add_task(audit, state="failed")

    html = logged_in.get("/tasks?state=bogus").get_data(as_text=True)

    assert row_count(html) == 2


def test_filter_by_name(logged_in, audit):
    add_task(audit, ADD_TASK)
    broken = add_task(audit, BROKEN_TASK, ["x"], state="failed")

    html = logged_in.get(f"/tasks?name={BROKEN_TASK}").get_data(as_text=True)

    assert row_count(html) == 1
    assert broken in html


def test_search_by_id_args_and_error(logged_in, audit):
    by_id = add_task(audit)
    add_task(audit, args=["order-99817"])
    add_task(audit, state="failed", error="SmtpPermanentError: mailbox unavailable")

    html = logged_in.get(f"/tasks?q={by_id}").get_data(as_text=True)
    assert row_count(html) == 1
    assert by_id in html

    html = logged_in.get("/tasks?q=order-99817").get_data(as_text=True)
    assert row_count(html) == 1

    html = logged_in.get("/tasks?q=mailbox unavailable").get_data(as_text=True)
    assert row_count(html) == 1

    html = logged_in.get("/tasks?q=nothing-like-this").get_data(as_text=True)
    assert row_count(html) == 0
    assert "No task matches these filters." in html


def test_list_has_no_tracebacks(logged_in, audit):
    add_task(audit, state="failed", traceback="Traceback: UNIQUE-TRACE-MARKER")

    html = logged_in.get("/tasks").get_data(as_text=True)

    assert "UNIQUE-TRACE-MARKER" not in html


def next_link(html: str, rel: str) -> str | None:
    match = re.search(rf'href="([^"]+)" rel="{rel}"', html)
    return match.group(1).replace("&amp;", "&") if match else None


def test_pagination_older_and_newer(logged_in, audit):
    ids = [add_task(audit, args=[number]) for number in range(7)]
    newest_first = list(reversed(ids))

    first = logged_in.get("/tasks?limit=3").get_data(as_text=True)
    assert shown_ids(first) == newest_first[:3]
    assert next_link(first, "prev") is None

    second = logged_in.get(next_link(first, "next")).get_data(as_text=True)
    assert shown_ids(second) == newest_first[3:6]

    third = logged_in.get(next_link(second, "next")).get_data(as_text=True)
    assert shown_ids(third) == newest_first[6:]
    assert next_link(third, "next") is None

    back = logged_in.get(next_link(third, "prev")).get_data(as_text=True)
    assert shown_ids(back) == newest_first[3:6]

    start = logged_in.get(next_link(back, "prev")).get_data(as_text=True)
    assert shown_ids(start) == newest_first[:3]
    assert next_link(start, "prev") is None


def test_pagination_stable_when_tasks_arrive(logged_in, audit):
    ids = [add_task(audit, args=[number]) for number in range(4)]
    first = logged_in.get("/tasks?limit=2").get_data(as_text=True)

    add_task(audit, args=["newer"])
    second = logged_in.get(next_link(first, "next")).get_data(as_text=True)

    assert shown_ids(second) == [ids[1], ids[0]]


def test_pagination_keeps_filters(logged_in, audit):
    for _ in range(3):
        add_task(audit, state="failed")
    add_task(audit, state="succeeded")

    first = logged_in.get("/tasks?state=failed&limit=2").get_data(as_text=True)
    second = logged_in.get(next_link(first, "next")).get_data(as_text=True)

    assert row_count(second) == 1
    assert 'class="row-failed"' in second


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("100000", 200), ("-5", 1), ("0", 1), ("abc", 50), ("", 50), ("7", 7)],
)
def test_page_size_clamped(logged_in, audit, limit, expected):
    for number in range(205):
        audit.record_enqueued(f"task-{number:04d}", ADD_TASK, [number], {}, "q")

    html = logged_in.get(f"/tasks?limit={limit}").get_data(as_text=True)

    assert row_count(html) == expected


def test_bad_cursor_gives_first_page(logged_in, audit):
    add_task(audit)

    for cursor in ("garbage", "nan~x", "1.5", "inf~abc"):
        html = logged_in.get(f"/tasks?before={cursor}").get_data(as_text=True)
        assert row_count(html) == 1, cursor


def test_htmx_gets_fragment(logged_in, audit):
    add_task(audit)

    fragment = logged_in.get("/tasks", headers={"HX-Request": "true"})
    full = logged_in.get("/tasks")

    assert "<html" not in fragment.get_data(as_text=True)
    assert 'id="task-list"' in fragment.get_data(as_text=True)
    assert row_count(fragment.get_data(as_text=True)) == 1
    assert full.get_data(as_text=True).startswith("<!doctype html>")
    assert 'id="task-list"' in full.get_data(as_text=True)
    assert "HX-Request" in fragment.headers["Vary"]


def test_list_polls_while_visible(logged_in):
    html = logged_in.get("/tasks").get_data(as_text=True)

    assert 'hx-trigger="every 5s, refresh"' in html
    assert "data-poll" in html
    assert "/static/dashboard.js" in html


# Escaping


def test_xss_escaped_in_list(logged_in, audit):
    add_task(audit, BROKEN_TASK, [XSS], {"note": XSS}, state="failed", error=XSS)

    html = logged_in.get("/tasks").get_data(as_text=True)

    assert XSS not in html
    assert ESCAPED_XSS in html


def test_xss_escaped_in_fragment(logged_in, audit):
    add_task(audit, BROKEN_TASK, [XSS], state="failed", error=XSS)

    html = logged_in.get("/tasks", headers={"HX-Request": "true"}).get_data(
        as_text=True
    )

    assert XSS not in html
    assert ESCAPED_XSS in html


def test_xss_escaped_in_detail(logged_in, audit):
    task_id = add_task(
        audit, BROKEN_TASK, [XSS], {"note": XSS}, state="failed", error=XSS,
        traceback=f"Traceback\n  {XSS}",
    )  # fmt: skip

    html = logged_in.get(f"/tasks/{task_id}").get_data(as_text=True)

    assert XSS not in html
    assert html.count(ESCAPED_XSS) >= 4


def test_xss_task_name_escaped(logged_in, audit):
    task_id = add_task(audit, f"tasks.{XSS}.name", state="failed")

    list_html = logged_in.get("/tasks").get_data(as_text=True)
    detail_html = logged_in.get(f"/tasks/{task_id}").get_data(as_text=True)

    assert XSS not in list_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in list_html
    assert XSS not in detail_html
    assert ESCAPED_XSS in detail_html


def test_xss_in_search_box_escaped(logged_in):
    html = logged_in.get(f"/tasks?q={XSS}&name={XSS}").get_data(as_text=True)

    assert XSS not in html


# Task detail


def test_detail_shows_fields(logged_in, audit):
    task_id = add_task(
        audit, BROKEN_TASK, ["order-7"], {"force": True}, state="failed",
        error="PermanentError: customer has no email",
        traceback="Traceback (most recent call last):\n  File x",
    )  # fmt: skip

    html = logged_in.get(f"/tasks/{task_id}").get_data(as_text=True)

    assert BROKEN_TASK in html
    assert task_id in html
    assert "order-7" in html
    assert "&#34;force&#34;: true" in html
    assert "PermanentError: customer has no email" in html
    assert '<pre class="code traceback">Traceback (most recent call last):' in html
    assert "worker-host" in html
    assert "4242" in html
    for label in ("Queued", "Started", "Finished", "Wait time", "Run time"):
        assert f"<dt>{label}</dt>" in html
    assert "<td>enqueued</td>" in html
    assert "<td>started</td>" in html
    assert "<td>failed</td>" in html
    assert "Retry this task" in html


def test_detail_links_retries(logged_in, audit):
    original = add_task(audit, state="failed")
    retry = add_task(audit, retry_of=original)

    original_html = logged_in.get(f"/tasks/{original}").get_data(as_text=True)
    retry_html = logged_in.get(f"/tasks/{retry}").get_data(as_text=True)

    assert f'href="/tasks/{retry}"' in original_html
    assert f'href="/tasks/{original}"' in retry_html


def test_list_links_retried_task(logged_in, audit):
    original = add_task(audit, state="failed")
    retry = add_task(audit, retry_of=original)

    html = logged_in.get("/tasks").get_data(as_text=True)

    assert f'class="retried" href="/tasks/{retry}"' in html
    assert f'action="/tasks/{original}/retry"' not in html


def test_retried_task_links_instead_of_button(logged_in, audit):
    original = add_task(audit, state="failed")
    retry = add_task(audit, retry_of=original)

    html = logged_in.get(f"/tasks/{original}").get_data(as_text=True)
    head = html[html.index('<section class="detail-head">') : html.index("</section>")]

    assert "Retry this task" not in html
    assert f'action="/tasks/{original}/retry"' not in html
    assert "Retried as" in head
    assert f'href="/tasks/{retry}"' in head


def test_no_retry_button_for_succeeded(logged_in, audit):
    task_id = add_task(audit, state="succeeded")

    html = logged_in.get(f"/tasks/{task_id}").get_data(as_text=True)

    assert "Retry this task" not in html


@pytest.mark.parametrize("state", ["failed", "expired", "revoked"])
def test_retry_button_for_retryable_states(logged_in, audit, state):
    task_id = add_task(audit, state=state)

    html = logged_in.get(f"/tasks/{task_id}").get_data(as_text=True)

    assert "Retry this task" in html


def test_unknown_task_404(logged_in):
    response = logged_in.get("/tasks/no-such-task")

    assert response.status_code == 404
    assert "not in the audit log" in response.get_data(as_text=True)


# Retry


@pytest.fixture
def redis_app(redis_settings):
    users.add_user(redis_settings, "alice", PASSWORD)
    return create_app(redis_settings, {"TESTING": True})


@pytest.fixture
def redis_client(redis_app):
    client = redis_app.test_client()
    assert login(client, "alice", PASSWORD).status_code == 302
    return client


def test_retry_enqueues_new_task(redis_client, redis_settings):
    audit = queue.audit_log(redis_settings)
    task_id = add_task(audit, BROKEN_TASK, ["no such order"], state="failed")
    token = page_token(redis_client, f"/tasks/{task_id}")

    response = redis_client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token})

    assert response.status_code == 302
    new_id = audit.get(task_id)["retried_by"]
    assert new_id
    assert response.headers["Location"] == f"/tasks/{new_id}"

    page = redis_client.get(response.headers["Location"]).get_data(as_text=True)
    assert f"queued again as task {new_id}" in page
    assert f'href="/tasks/{task_id}"' in page

    new_row = audit.get(new_id)
    assert new_row["name"] == BROKEN_TASK
    assert json.loads(new_row["args"]) == ["no such order"]
    assert new_row["retry_of"] == task_id
    assert queue.queue_length(redis_settings) == 1

    actions = audit.actions()
    assert len(actions) == 1
    assert actions[0]["username"] == "alice"
    assert actions[0]["action"] == "retry"
    assert actions[0]["task_id"] == task_id
    assert "alice" in redis_client.get("/actions").get_data(as_text=True)


def test_retry_from_list(redis_client, redis_settings):
    audit = queue.audit_log(redis_settings)
    task_id = add_task(audit, BROKEN_TASK, ["x"], state="expired")
    html = redis_client.get("/tasks").get_data(as_text=True)

    assert f'action="/tasks/{task_id}/retry"' in html
    response = redis_client.post(
        f"/tasks/{task_id}/retry", data={"csrf_token": csrf_from(html)}
    )

    assert response.status_code == 302
    assert audit.get(task_id)["retried_by"]


def test_retry_not_retryable_flashes(redis_client, redis_settings):
    audit = queue.audit_log(redis_settings)
    task_id = add_task(audit, BROKEN_TASK, ["x"], state="succeeded")
    token = page_token(redis_client)

    response = redis_client.post(
        f"/tasks/{task_id}/retry", data={"csrf_token": token}, follow_redirects=True
    )

    assert response.status_code == 200
    assert "Retry failed: task" in response.get_data(as_text=True)
    assert "only failed, revoked, expired tasks can be retried" in (
        response.get_data(as_text=True)
    )
    assert queue.queue_length(redis_settings) == 0
    assert audit.actions() == []


def test_retry_unknown_task_name_flashes(redis_client, redis_settings):
    audit = queue.audit_log(redis_settings)
    task_id = add_task(audit, "tasks.gone.removed_task", ["x"], state="failed")
    token = page_token(redis_client)

    response = redis_client.post(
        f"/tasks/{task_id}/retry", data={"csrf_token": token}, follow_redirects=True
    )

    assert response.status_code == 200
    assert "is not registered" in response.get_data(as_text=True)
    assert queue.queue_length(redis_settings) == 0


def test_second_retry_post_creates_no_task(redis_client, redis_settings):
    audit = queue.audit_log(redis_settings)
    task_id = add_task(audit, BROKEN_TASK, ["x"], state="failed")
    token = page_token(redis_client, f"/tasks/{task_id}")

    first = redis_client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token})
    second = redis_client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token})

    new_id = audit.get(task_id)["retried_by"]
    assert first.headers["Location"] == f"/tasks/{new_id}"
    assert second.status_code == 302
    assert second.headers["Location"] == f"/tasks/{task_id}"
    assert queue.queue_length(redis_settings) == 1
    assert len(audit.actions()) == 1
    retries = [row for row in audit.search(limit=50) if row["retry_of"] == task_id]
    assert [row["id"] for row in retries] == [new_id]

    page = redis_client.get(second.headers["Location"]).get_data(as_text=True)
    flash = re.search(r'<li class="flash flash-info"[^>]*>(.*?)</li>', page, re.DOTALL)
    assert flash, "no info message after the second retry"
    assert "already retried as task" in flash.group(1)
    assert f'<a href="/tasks/{new_id}">{new_id}</a>' in flash.group(1)
    assert "Retry failed" not in page
    assert "Retry this task" not in page


def test_retry_unknown_task_id(redis_client):
    token = page_token(redis_client)

    response = redis_client.post("/tasks/no-such-id/retry", data={"csrf_token": token})

    assert response.status_code == 302
    page = redis_client.get(response.headers["Location"])
    assert page.status_code == 404
    assert "not in the audit log" in page.get_data(as_text=True)


def test_queue_length_shown(redis_client, redis_settings):
    queue.enqueue_by_name(ADD_TASK, [1, 2])
    queue.enqueue_by_name(ADD_TASK, [3, 4])

    html = redis_client.get("/tasks").get_data(as_text=True)

    assert "<strong>2</strong> waiting" in html


# Health


def make_erp_database(env) -> str:
    path = env["TSHJOBS_ERP_DATABASE_URL"].removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS probe (x)")
    conn.close()
    return path


def assert_no_secrets(body: str, settings, *extra: str) -> None:
    for text in (settings.secret_key, str(settings.data_dir), *extra):
        assert text not in body
    if settings.redis_url:
        assert settings.redis_url not in body
        assert settings.redis_url.rsplit(":", 1)[-1].split("/")[0] not in body


def test_health_ok(redis_settings, env):
    erp_path = make_erp_database(env)
    audit = queue.audit_log(redis_settings)
    add_task(audit, BROKEN_TASK, [XSS], state="failed", error="secret-ish error")
    queue.enqueue_by_name(ADD_TASK, [1, 2])
    app = create_app(redis_settings, {"TESTING": True})

    response = app.test_client().get("/health")
    body = response.get_data(as_text=True)
    report = response.get_json()

    assert response.status_code == 200
    assert report["status"] == "ok"
    assert report["checks"]["queue"] == {
        "ok": True, "storage": "redis", "length": 1, "scheduled": 0,
    }  # fmt: skip
    assert report["checks"]["audit"] == AUDIT_OK
    assert report["checks"]["spool"] == {"ok": True, "pending": 0, "oldest_at": None}
    assert report["checks"]["state"] == {"ok": True}
    assert report["checks"]["erp"] == {"ok": True, "kind": "sqlite"}
    assert_no_secrets(
        body, redis_settings, erp_path, BROKEN_TASK, ADD_TASK, "alert", "secret-ish"
    )


def test_health_sqlite_queue(settings, env):
    make_erp_database(env)
    queue.audit_log(settings)
    app = create_app(settings, {"TESTING": True})

    response = app.test_client().get("/health")

    assert response.status_code == 200
    assert response.get_json()["checks"]["queue"]["storage"] == "sqlite"


def test_create_app_creates_audit_database(settings, env):
    make_erp_database(env)
    assert not settings.audit_path.exists()

    app = create_app(settings, {"TESTING": True, "IMPORT_TASK_MODULES": False})

    assert settings.audit_path.is_file()
    conn = sqlite3.connect(settings.audit_path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"tasks", "task_events", "operator_actions"} <= tables
    report = app.test_client().get("/health").get_json()
    assert report["status"] == "ok"
    assert report["checks"]["audit"] == AUDIT_OK


def test_health_shows_audit_writes_pending(settings, env):
    make_erp_database(env)
    queue.audit_log(settings)
    buffer = AuditRetryBuffer(retry_buffer_path(settings.audit_path))
    buffer.append(1000.0, "record_started", [], {}, "task-1", "database is locked", 1)
    app = create_app(settings, {"TESTING": True})

    response = app.test_client().get("/health")
    report = response.get_json()

    assert response.status_code == 503
    assert report["status"] == "degraded"
    assert report["checks"]["audit"]["ok"] is False
    assert report["checks"]["audit"]["writes_pending"] == 1
    assert report["checks"]["audit"]["oldest_pending_at"] == 1000.0
    assert "locked" not in response.get_data(as_text=True)


def test_health_shows_spooled_tasks(redis_settings, env):
    make_erp_database(env)
    queue.audit_log(redis_settings)
    TaskSpool(spool_path(redis_settings)).append(
        "tshjobs", "task-1", b"data", None, "redis down"
    )
    app = create_app(redis_settings, {"TESTING": True})

    response = app.test_client().get("/health")
    report = response.get_json()

    assert response.status_code == 503
    assert report["status"] == "degraded"
    assert report["checks"]["spool"]["ok"] is False
    assert report["checks"]["spool"]["pending"] == 1


def test_health_fails_on_corrupt_state_database(settings, env):
    make_erp_database(env)
    queue.audit_log(settings)
    app = create_app(settings, {"TESTING": True, "IMPORT_TASK_MODULES": False})
    settings.state_path.write_bytes(b"not a database" * 600)

    response = app.test_client().get("/health")
    report = response.get_json()

    assert response.status_code == 503
    assert report["checks"]["state"] == {"ok": False, "error": "DatabaseError"}
    assert str(settings.state_path) not in response.get_data(as_text=True)


def test_health_audit_ok_while_redis_down(env, monkeypatch):
    from tshjobs import settings as settings_module

    make_erp_database(env)
    monkeypatch.setenv("TSHJOBS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    settings_module.reset_settings()
    settings = get_settings()
    app = create_app(settings, {"TESTING": True})

    report = app.test_client().get("/health").get_json()

    assert report["status"] == "down"
    assert report["checks"]["queue"]["ok"] is False
    assert report["checks"]["audit"] == AUDIT_OK


def test_create_app_survives_unusable_audit_path(settings, env, caplog):
    make_erp_database(env)
    settings.audit_path.mkdir(parents=True)

    app = create_app(settings, {"TESTING": True, "IMPORT_TASK_MODULES": False})
    report = app.test_client().get("/health").get_json()

    assert "Creating the audit database" in caplog.text
    assert report["checks"]["audit"]["ok"] is False
    assert report["status"] != "ok"


def test_health_degraded_without_erp(settings):
    queue.audit_log(settings)
    app = create_app(settings, {"TESTING": True})

    response = app.test_client().get("/health")
    report = response.get_json()

    assert response.status_code == 503
    assert report["status"] == "degraded"
    assert report["checks"]["erp"] == {"ok": False, "error": "FileNotFoundError"}
    assert report["checks"]["queue"]["ok"]


def test_health_erp_postgres_unreachable(env, monkeypatch):
    from tshjobs import settings as settings_module

    port = free_port()
    url = f"postgresql://tshjobs:pg-password-9@127.0.0.1:{port}/erp"
    monkeypatch.setenv("TSHJOBS_ERP_DATABASE_URL", url)
    settings_module.reset_settings()
    settings = get_settings()
    queue.audit_log(settings)
    app = create_app(settings, {"TESTING": True})

    response = app.test_client().get("/health")
    body = response.get_data(as_text=True)

    assert response.status_code == 503
    assert response.get_json()["checks"]["erp"]["ok"] is False
    assert "pg-password-9" not in body
    assert str(port) not in body


def test_health_down_when_redis_unreachable(env, monkeypatch):
    from tshjobs import settings as settings_module

    make_erp_database(env)
    port = free_port()
    monkeypatch.setenv("TSHJOBS_REDIS_URL", f"redis://:redis-pw-7@127.0.0.1:{port}/0")
    settings_module.reset_settings()
    settings = get_settings()
    queue.audit_log(settings)
    app = create_app(settings, {"TESTING": True})

    started = time.monotonic()
    response = app.test_client().get("/health")
    body = response.get_data(as_text=True)

    assert response.status_code == 503
    assert response.get_json()["status"] == "down"
    assert response.get_json()["checks"]["queue"] == {
        "ok": False,
        "error": "ConnectionError",
    }
    assert "redis-pw-7" not in body
    assert str(port) not in body
    assert time.monotonic() - started < 10


def test_health_audit_missing(settings, env):
    make_erp_database(env)
    app = create_app(settings, {"TESTING": True})
    queue.audit_log(settings)
    settings.audit_path.unlink()
    settings.audit_path.mkdir()

    response = app.test_client().get("/health")

    assert response.status_code == 503
    assert response.get_json()["status"] == "degraded"
    assert response.get_json()["checks"]["audit"]["ok"] is False


def test_health_audit_locked(settings, env):
    make_erp_database(env)
    app = create_app(settings, {"TESTING": True})
    queue.audit_log(settings)
    holder = sqlite3.connect(settings.audit_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = app.test_client().get("/health")
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert response.status_code == 503
    assert response.get_json()["checks"]["audit"] == {
        "ok": False,
        "error": "OperationalError",
    }


def test_task_list_survives_queue_outage(env, monkeypatch):
    from tshjobs import settings as settings_module

    monkeypatch.setenv("TSHJOBS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    settings_module.reset_settings()
    settings = get_settings()
    users.add_user(settings, "alice", PASSWORD)
    add_task(queue.audit_log(settings))
    client = create_app(settings, {"TESTING": True}).test_client()
    login(client, "alice", PASSWORD)

    response = client.get("/tasks")

    assert response.status_code == 200
    assert "Queue storage unreachable" in response.get_data(as_text=True)
    assert row_count(response.get_data(as_text=True)) == 1
