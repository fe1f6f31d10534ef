"""Dashboard users, stored in the appliance's SQLite database.

Passwords are kept only as werkzeug scrypt hashes. Usernames match
`[A-Za-z0-9._-]{1,64}` and are compared without regard to case, so `Admin`
and `admin` are the same user.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from contextlib import closing

import sqlite_utils
from werkzeug.security import check_password_hash, generate_password_hash

from tshjobs.errors import TshjobsError
from tshjobs.settings import Settings

logger = logging.getLogger(__name__)

TABLE = "dashboard_users"
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_PASSWORD_LENGTH = 12
# scrypt reads the whole password, so an upper bound keeps one login request
# from costing more than a normal one.
MAX_PASSWORD_LENGTH = 1024
HASH_METHOD = "scrypt"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    username TEXT PRIMARY KEY COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""

# Hash compared against when the username is unknown, so that a failed login
# costs the same scrypt work whether or not the user exists.
_dummy_hash: str | None = None


class UserError(TshjobsError):
    """Raised when a dashboard user cannot be added, changed or found. The
    message names the user and the reason."""


class InvalidUsername(UserError):
    """Raised when a username does not match `[A-Za-z0-9._-]{1,64}`."""


class InvalidPassword(UserError):
    """Raised when a password is shorter than 12 or longer than 1024
    characters."""


class UserExists(UserError):
    """Raised when adding a username that is already taken (in any case)."""


class UserNotFound(UserError):
    """Raised when changing or deleting a username that does not exist."""


def _open(settings: Settings) -> sqlite_utils.Database:
    settings.state_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(settings.state_path)
    db.execute(_SCHEMA)
    return db


def validate_username(username: str) -> None:
    """Raise InvalidUsername unless the name matches `[A-Za-z0-9._-]{1,64}`."""
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise InvalidUsername(
            f"invalid username {username!r}: use 1 to 64 letters, digits, "
            "dots, underscores or hyphens"
        )


def validate_password(password: str) -> None:
    """Raise InvalidPassword unless the length is from 12 to 1024 characters.

    The message gives the rule, never the password.
    """
    if not isinstance(password, str) or not password:
        raise InvalidPassword("the password is empty")

    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidPassword(
            f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )

    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidPassword(
            f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters"
        )


def _hash(password: str) -> str:
    return generate_password_hash(password, method=HASH_METHOD)


def add_user(settings: Settings, username: str, password: str) -> None:
    """Add a dashboard user, or raise InvalidUsername, InvalidPassword or
    UserExists."""
    validate_username(username)
    validate_password(password)
    password_hash = _hash(password)

    now = time.time()
    row = {
        "username": username,
        "password_hash": password_hash,
        "created_at": now,
        "updated_at": now,
    }
    with closing(_open(settings)) as db:
        existing = _find(db, username)
        if existing is not None:
            raise UserExists(f"user {existing['username']!r} already exists")

        try:
            db[TABLE].insert(row)
        except sqlite3.IntegrityError:
            # Another process added the same name since the check above.
            raise UserExists(f"user {username!r} already exists") from None
    logger.info("dashboard user %s added", username)


def set_password(settings: Settings, username: str, password: str) -> None:
    """Replace a user's password, or raise InvalidPassword or UserNotFound.

    Sessions of that user signed with the old password stop working, because
    the dashboard ties each session to the stored hash.
    """
    validate_password(password)
    password_hash = _hash(password)

    with closing(_open(settings)) as db:
        cursor = db.execute(
            f"UPDATE {TABLE} SET password_hash = ?, updated_at = ? WHERE username = ?",
            [password_hash, time.time(), username],
        )
        if cursor.rowcount == 0:
            raise UserNotFound(f"user {username!r} not found")
    logger.info("password of dashboard user %s changed", username)


def verify_password(settings: Settings, username: str, password: str) -> bool:
    """Return whether the password matches the user's hash, in constant time.

    Unknown and malformed usernames are checked against a dummy hash, so they
    take the same scrypt time as a wrong password for a real user.
    """
    global _dummy_hash

    user = None
    if isinstance(username, str) and USERNAME_PATTERN.fullmatch(username):
        user = get_user(settings, username)

    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        password = ""

    if user is None:
        if _dummy_hash is None:
            _dummy_hash = _hash("dummy password for unknown users")
        check_password_hash(_dummy_hash, password)
        return False

    return check_password_hash(user["password_hash"], password)


def get_user(settings: Settings, username: str) -> dict | None:
    """Return the user's row, with its password hash, or None."""
    with closing(_open(settings)) as db:
        return _find(db, username)


def _find(db: sqlite_utils.Database, username: str) -> dict | None:
    rows = list(db.query(f"SELECT * FROM {TABLE} WHERE username = ?", [username]))
    return rows[0] if rows else None


def list_users(settings: Settings) -> list[dict]:
    """Return every user as `{username, created_at, updated_at}`, by name.

    The rows carry no password hashes.
    """
    with closing(_open(settings)) as db:
        return list(
            db.query(
                f"SELECT username, created_at, updated_at FROM {TABLE} "
                "ORDER BY username"
            )
        )


def delete_user(settings: Settings, username: str) -> None:
    """Delete a user, or raise UserNotFound."""
    with closing(_open(settings)) as db:
        cursor = db.execute(f"DELETE FROM {TABLE} WHERE username = ?", [username])
        if cursor.rowcount == 0:
            raise UserNotFound(f"user {username!r} not found")
    logger.info("dashboard user %s deleted", username)
