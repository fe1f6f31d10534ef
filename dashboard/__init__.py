"""The staff dashboard: a Flask app to watch tasks in the audit log and retry
failed ones.

Run it with `gunicorn dashboard.wsgi:app`. Every page except /login, /health,
/static and the Zoho Books webhook (/webhooks/zoho, which checks a token)
needs a login. Add users with `tshjobs user add NAME`.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException

from dashboard import auth, formatting, health, security, tasks, zoho
from dashboard.security import derive_key
from dashboard.webhooks import bp as webhooks_bp
from tshjobs import __version__, queue, users
from tshjobs.audit import AuditLog
from tshjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

SESSION_KEY_PURPOSE = b"dashboard-session"


def _handle_http_error(error: HTTPException):
    page = render_template("error.html", error=error)
    return page, error.code


def _create_audit_database(settings: Settings) -> None:
    """Create the audit database and its tables unless they exist, so that a
    fresh appliance passes the health check before its first task.

    A failure is logged, not raised, so the dashboard still starts and
    /health reports the audit check as failed.
    """
    try:
        AuditLog(settings.audit_path)
    except (OSError, sqlite3.Error):
        logger.exception("Creating the audit database %s failed", settings.audit_path)


def create_app(settings: Settings | None = None, test_config: dict | None = None):
    """Build the dashboard app from the appliance settings.

    `test_config` overrides Flask settings after the defaults, for example
    `SESSION_COOKIE_SECURE`, `LOGIN_MAX_FAILURES` or `IMPORT_TASK_MODULES`.
    """
    settings = settings if settings is not None else get_settings()

    app = Flask(__name__)
    app.config.update(
        TSHJOBS_SETTINGS=settings,
        SECRET_KEY=derive_key(settings.secret_key, SESSION_KEY_PURPOSE),
        SESSION_COOKIE_NAME="tshjobs_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.dashboard_secure_cookies,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=users.SESSION_LIFETIME),
        MAX_CONTENT_LENGTH=64 * 1024,
        LOGIN_MAX_FAILURES=10,
        LOGIN_FAILURE_WINDOW=600.0,
        IMPORT_TASK_MODULES=True,
    )
    if test_config:
        app.config.update(test_config)

    _create_audit_database(settings)

    if app.config["IMPORT_TASK_MODULES"]:
        # The retry button enqueues tasks by name, so Huey's registry must
        # know every task module listed in TSHJOBS_TASK_MODULES.
        queue.import_task_modules(settings)

    # Order matters: the login check runs before the CSRF check, so that an
    # anonymous POST is sent to the login page.
    auth.init_app(app)
    security.init_app(app)
    formatting.init_app(app)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(zoho.bp)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.jinja_env.globals["version"] = __version__

    logger.info("Dashboard created; data directory %s", settings.data_dir)
    return app
