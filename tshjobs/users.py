"""Dashboard users and their login sessions, stored in the appliance's SQLite
database.

Passwords are kept only as werkzeug scrypt hashes. Usernames match
`[A-Za-z0-9._-]{1,64}` and are compared without regard to case, so `Admin`
and `admin` are the same user.

Each dashboard login creates a row in `dashboard_sessions`, keyed by the
SHA-256 hash of a random session id that only the signed session cookie
contains. A session is valid until it is revoked (logout, password change,
user deletion) or SESSION_LIFETIME has passed since the login.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path

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

SESSIONS_TABLE = "dashboard_sessions"
# Seconds a login session is valid, counted from the login, not from the last
# request, so a stolen cookie cannot be kept alive by using it.
SESSION_LIFETIME = 12 * 3600.0
# Seconds between two updates of a session's last_seen_at. The task list
# refreshes every 5 seconds, and a write per refresh would contend for the
# database lock with logins and the email sent log.
LAST_SEEN_INTERVAL = 60.0
# Seconds to wait for another connection's write lock.
BUSY_TIMEOUT = 5.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    username TEXT PRIMARY KEY COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS {SESSIONS_TABLE} (
    id_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL COLLATE NOCASE,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS {SESSIONS_TABLE}_username
    ON {SESSIONS_TABLE} (username);
CREATE INDEX IF NOT EXISTS {SESSIONS_TABLE}_created
    ON {SESSIONS_TABLE} (created_at);
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


def connect_state(path: Path) -> sqlite3.Connection:
    """Open the appliance database in autocommit mode and WAL journal mode.

    A missing file is created with mode 0600, because it stores password
    hashes and session ids. An existing file keeps its mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        logger.info("created the appliance database %s", path)

    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _open(settings: Settings) -> sqlite_utils.Database:
    db = sqlite_utils.Database(connect_state(settings.state_path))
    db.conn.executescript(_SCHEMA)
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

    The same transaction revokes every dashboard session of that user.
    """
    validate_password(password)
    password_hash = _hash(password)

    now = time.time()
    with closing(_open(settings)) as db, db.atomic():
        cursor = db.execute(
            f"UPDATE {TABLE} SET password_hash = ?, updated_at = ? WHERE username = ?",
            [password_hash, now, username],
        )
        if cursor.rowcount == 0:
            raise UserNotFound(f"user {username!r} not found")

        revoked = _revoke_user_sessions(db, username, now)
    logger.info(
        "password of dashboard user %s changed and %d session(s) revoked",
        username,
        revoked,
    )


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
    """Delete a user and revoke the user's sessions, or raise UserNotFound."""
    now = time.time()
    with closing(_open(settings)) as db, db.atomic():
        cursor = db.execute(f"DELETE FROM {TABLE} WHERE username = ?", [username])
        if cursor.rowcount == 0:
            raise UserNotFound(f"user {username!r} not found")

        revoked = _revoke_user_sessions(db, username, now)
    logger.info(
        "dashboard user %s deleted and %d session(s) revoked", username, revoked
    )


# Login sessions


def _session_hash(session_id: str) -> str:
    # The session id has 256 random bits, so one plain SHA-256 is enough to
    # keep a copy of the database from yielding usable session ids.
    return hashlib.sha256(session_id.encode()).hexdigest()


def _revoke_user_sessions(db: sqlite_utils.Database, username: str, now: float) -> int:
    cursor = db.execute(
        f"UPDATE {SESSIONS_TABLE} SET revoked_at = ? "
        "WHERE username = ? AND revoked_at IS NULL",
        [now, username],
    )
    return cursor.rowcount


def create_session(
    settings: Settings, username: str, lifetime: float = SESSION_LIFETIME
) -> str:
    """Store a new login session of the user and return its random id, or
    raise UserNotFound.

    The same transaction deletes every session older than `lifetime` seconds.
    The id is a secret, so store it only in the signed session cookie.
    """
    session_id = secrets.token_urlsafe(32)
    now = time.time()
    with closing(_open(settings)) as db:
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            user = _find(db, username)
            if user is None:
                raise UserNotFound(f"user {username!r} not found")

            db.conn.execute(
                f"INSERT INTO {SESSIONS_TABLE} "
                "(id_hash, username, created_at, last_seen_at) VALUES (?, ?, ?, ?)",
                [_session_hash(session_id), user["username"], now, now],
            )
            pruned = db.conn.execute(
                f"DELETE FROM {SESSIONS_TABLE} WHERE created_at <= ?",
                [now - lifetime],
            ).rowcount
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")

    if pruned:
        logger.info("deleted %d expired dashboard session(s)", pruned)
    return session_id


def session_username(
    settings: Settings, session_id: str, lifetime: float = SESSION_LIFETIME
) -> str | None:
    """Return the name of the user who owns a valid session, or None.

    None means the id is unknown, revoked, older than `lifetime` seconds, or
    its user was deleted. A valid session's last_seen_at is updated only when
    it is LAST_SEEN_INTERVAL seconds old or older.
    """
    if not isinstance(session_id, str) or not session_id:
        return None

    id_hash = _session_hash(session_id)
    now = time.time()
    with closing(_open(settings)) as db:
        rows = list(
            db.query(
                f"SELECT users.username, sessions.created_at, "
                f"sessions.last_seen_at, sessions.revoked_at "
                f"FROM {SESSIONS_TABLE} AS sessions "
                f"JOIN {TABLE} AS users ON users.username = sessions.username "
                "WHERE sessions.id_hash = ?",
                [id_hash],
            )
        )
        if not rows:
            return None

        row = rows[0]
        if row["revoked_at"] is not None or row["created_at"] <= now - lifetime:
            return None

        if now - row["last_seen_at"] >= LAST_SEEN_INTERVAL:
            db.execute(
                f"UPDATE {SESSIONS_TABLE} SET last_seen_at = ? WHERE id_hash = ?",
                [now, id_hash],
            )
    return row["username"]


def revoke_session(settings: Settings, session_id: str) -> bool:
    """Revoke one session and return True, or return False when it was
    unknown or already revoked."""
    with closing(_open(settings)) as db:
        cursor = db.execute(
            f"UPDATE {SESSIONS_TABLE} SET revoked_at = ? "
            "WHERE id_hash = ? AND revoked_at IS NULL",
            [time.time(), _session_hash(session_id)],
        )
    return cursor.rowcount == 1


def revoke_sessions(settings: Settings, username: str) -> int:
    """Revoke every open dashboard session of a user and return how many
    there were. An unknown username revokes nothing and returns 0."""
    with closing(_open(settings)) as db:
        revoked = _revoke_user_sessions(db, username, time.time())
    if revoked:
        logger.info("revoked %d session(s) of dashboard user %s", revoked, username)
    return revoked
