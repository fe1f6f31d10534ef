"""Login and logout with flask-login, and the login requirement of every page.

A session stores `username:fingerprint`, where the fingerprint is an HMAC of
the user's password hash. Changing a password or deleting the user therefore
ends that user's sessions at their next request.
"""

from __future__ import annotations

import hashlib
import hmac
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

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
login_manager = LoginManager()

# Endpoints served without a login.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "health.health", "static"})


class DashboardUser(UserMixin):
    def __init__(self, username: str, password_hash: str):
        self.id = username
        self.username = username
        self._fingerprint = password_fingerprint(password_hash)

    def get_id(self) -> str:
        return f"{self.username}:{self._fingerprint}"


def password_fingerprint(password_hash: str) -> str:
    key = current_app.secret_key.encode()
    digest = hmac.new(key, password_hash.encode(), hashlib.sha256).hexdigest()
    return digest[:32]


@login_manager.user_loader
def load_user(session_id: str) -> DashboardUser | None:
    username, _, fingerprint = session_id.partition(":")
    row = users.get_user(current_app.config["TSHJOBS_SETTINGS"], username)
    if row is None:
        return None

    expected = password_fingerprint(row["password_hash"])
    if not hmac.compare_digest(fingerprint, expected):
        return None
    return DashboardUser(row["username"], row["password_hash"])


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

    wait = throttle.seconds_blocked(key)
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
        throttle.record_failure(key)
        logger.warning("Failed login of %r from %s", username, request.remote_addr)
        flash("Invalid username or password.", "error")
        return _render_login(username, 401)

    throttle.reset(key)
    row = users.get_user(settings, username)
    # A fresh session at login: the pre-login CSRF token is not reused.
    session.clear()
    session.permanent = True
    login_user(DashboardUser(row["username"], row["password_hash"]))
    logger.info("User %s logged in from %s", row["username"], request.remote_addr)

    target = request.form.get("next", "")
    if not is_safe_redirect(target):
        target = url_for("tasks.task_list")
    return redirect(target)


@bp.route("/logout", methods=["POST"])
def logout():
    username = current_user.username
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
