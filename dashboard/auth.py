"""Login and logout with flask-login, and the login requirement of every page.

The signed session cookie stores a random session id, and the
`dashboard_sessions` table in the appliance database (`tshjobs.users`) decides
whether that id is still valid. Logout revokes the session there, so a copy
of the cookie stops working. Changing a password or deleting the user revokes
all of that user's sessions, and a session expires 12 hours after the login.
"""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from dashboard.ratelimit import LoginThrottle
from dashboard.security import is_safe_redirect
from tshjobs import users
from tshjobs.settings import Settings

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
login_manager = LoginManager()

# Endpoints served without a login. Zoho Books webhooks authenticate with
# their own token (dashboard.webhooks).
PUBLIC_ENDPOINTS = frozenset(
    {"auth.login", "health.health", "static", "webhooks.zoho_webhook"}
)


class DashboardUser(UserMixin):
    """A logged-in user. flask-login stores `get_id()`, the session id, in the
    session cookie."""

    def __init__(self, username: str, session_id: str):
        self.username = username
        self.session_id = session_id

    def get_id(self) -> str:
        return self.session_id


def _session_lifetime() -> float:
    return current_app.permanent_session_lifetime.total_seconds()


@login_manager.user_loader
def load_user(session_id: str) -> DashboardUser | None:
    settings = current_app.config["TSHJOBS_SETTINGS"]
    username = users.session_username(settings, session_id, _session_lifetime())
    if username is None:
        return None
    return DashboardUser(username, session_id)


@login_manager.unauthorized_handler
def unauthorized():
    if request.headers.get("HX-Request") == "true":
        # An HTMX refresh would otherwise swap the login page into the table.
        response = current_app.response_class(status=401)
        response.headers["HX-Redirect"] = url_for("auth.login")
        return response

    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def require_login():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if current_user.is_authenticated:
        return None
    return login_manager.unauthorized()


def _throttle() -> LoginThrottle:
    settings = current_app.config["TSHJOBS_SETTINGS"]
    return LoginThrottle(
        settings.state_path,
        max_failures=current_app.config["LOGIN_MAX_FAILURES"],
        window=current_app.config["LOGIN_FAILURE_WINDOW"],
    )


def _render_login(username: str = "", status: int = 200):
    settings = current_app.config["TSHJOBS_SETTINGS"]
    no_users = not users.list_users(settings)
    page = render_template(
        "login.html",
        username=username,
        no_users=no_users,
        next_url=request.values.get("next", ""),
    )
    return page, status


def _start_session(settings: Settings, username: str) -> DashboardUser | None:
    """Store a new session of a user whose password was just checked, or
    return None when the user was deleted since the check."""
    row = users.get_user(settings, username)
    if row is None:
        return None

    try:
        session_id = users.create_session(
            settings, row["username"], _session_lifetime()
        )
    except users.UserNotFound:
        return None
    return DashboardUser(row["username"], session_id)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(url_for("tasks.task_list"))
        return _render_login()

    settings = current_app.config["TSHJOBS_SETTINGS"]
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    throttle = _throttle()
    key = throttle.key(username, request.remote_addr)

    # The attempt is counted before the password check, so parallel guesses
    # cannot pass the limit. A successful login removes the count again.
    wait = throttle.record_attempt(key)
    if wait:
        logger.warning(
            "Login of %r from %s blocked after repeated failures",
            username,
            request.remote_addr,
        )
        minutes = max(1, round(wait / 60))
        flash(
            f"Too many failed logins for this user from your address. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            "error",
        )
        return _render_login(username, 429)

    if not users.verify_password(settings, username, password):
        logger.warning("Failed login of %r from %s", username, request.remote_addr)
        flash("Invalid username or password.", "error")
        return _render_login(username, 401)

    throttle.reset(key)
    user = _start_session(settings, username)
    if user is None:
        logger.warning(
            "Login of %r failed: the user was deleted during the login", username
        )
        flash("Invalid username or password.", "error")
        return _render_login(username, 401)

    # A fresh session at login: the pre-login CSRF token is not reused.
    session.clear()
    session.permanent = True
    login_user(user)
    logger.info("User %s logged in from %s", user.username, request.remote_addr)

    target = request.form.get("next", "")
    if not is_safe_redirect(target):
        target = url_for("tasks.task_list")
    return redirect(target)


@bp.route("/logout", methods=["POST"])
def logout():
    username = current_user.username
    users.revoke_session(
        current_app.config["TSHJOBS_SETTINGS"], current_user.session_id
    )
    logout_user()
    session.clear()
    logger.info("User %s logged out", username)
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.session_protection = "basic"
    app.before_request(require_login)
    app.register_blueprint(bp)
