"""Dashboard users in the appliance's SQLite database."""

from __future__ import annotations

import sqlite3
import stat
import time

import pytest

from tshjobs import users
from tshjobs.settings import get_settings

PASSWORD = "correct horse battery"


@pytest.fixture
def settings(settings_env):
    return get_settings()


def test_add_and_verify(settings):
    users.add_user(settings, "alice", PASSWORD)

    assert users.verify_password(settings, "alice", PASSWORD)
    assert not users.verify_password(settings, "alice", PASSWORD + "x")
    assert not users.verify_password(settings, "alice", "")


def test_password_stored_as_scrypt_hash(settings):
    users.add_user(settings, "alice", PASSWORD)

    conn = sqlite3.connect(settings.state_path)
    (stored,) = conn.execute(
        "SELECT password_hash FROM dashboard_users WHERE username = 'alice'"
    ).fetchone()
    conn.close()
    assert stored.startswith("scrypt:")
    assert PASSWORD not in stored


@pytest.mark.parametrize("password", ["", "short", "eleven char"])
def test_short_passwords_rejected(settings, password):
    with pytest.raises(users.InvalidPassword):
        users.add_user(settings, "alice", password)

    assert users.list_users(settings) == []


def test_twelve_characters_accepted(settings):
    users.add_user(settings, "alice", "x" * 12)

    assert users.verify_password(settings, "alice", "x" * 12)


def test_overlong_password_rejected(settings):
    with pytest.raises(users.InvalidPassword):
        users.add_user(settings, "alice", "x" * 1025)


def test_password_error_hides_password(settings):
    with pytest.raises(users.InvalidPassword) as caught:
        users.add_user(settings, "alice", "secret-pw")

    assert "secret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "username",
    ["", "a b", "al/ice", "al:ice", "x" * 65, "<script>", "ünï", "a\n"],
)
def test_invalid_usernames_rejected(settings, username):
    with pytest.raises(users.InvalidUsername):
        users.add_user(settings, username, PASSWORD)


@pytest.mark.parametrize("username", ["a", "alice.smith", "ops_1", "x-y", "Z" * 64])
def test_valid_usernames_accepted(settings, username):
    users.add_user(settings, username, PASSWORD)

    assert [row["username"] for row in users.list_users(settings)] == [username]


def test_duplicate_username_rejected(settings):
    users.add_user(settings, "alice", PASSWORD)

    with pytest.raises(users.UserExists):
        users.add_user(settings, "alice", PASSWORD + "2")
    with pytest.raises(users.UserExists):
        users.add_user(settings, "ALICE", PASSWORD + "2")

    assert users.verify_password(settings, "alice", PASSWORD)


def test_username_case_insensitive(settings):
    users.add_user(settings, "Alice", PASSWORD)

    assert users.verify_password(settings, "alice", PASSWORD)
    assert users.get_user(settings, "ALICE")["username"] == "Alice"


def test_unknown_user_fails(settings):
    assert not users.verify_password(settings, "nobody", PASSWORD)
    assert not users.verify_password(settings, "not a valid name!", PASSWORD)
    assert not users.verify_password(settings, "nobody", "x" * 5000)


def test_unknown_user_costs_same_time(settings):
    users.add_user(settings, "alice", PASSWORD)
    users.verify_password(settings, "nobody", "warm up the dummy hash")

    def best_of(username: str) -> float:
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            users.verify_password(settings, username, "wrong password!!")
            timings.append(time.perf_counter() - start)
        return min(timings)

    known = best_of("alice")
    unknown = best_of("nobody")
    # Both paths run one scrypt hash. Skipping it for unknown users would make
    # them return in a small fraction of the time.
    assert unknown > known * 0.5
    assert known > unknown * 0.5


def test_set_password(settings):
    users.add_user(settings, "alice", PASSWORD)
    before = users.get_user(settings, "alice")

    users.set_password(settings, "alice", "a new password 2")

    assert users.verify_password(settings, "alice", "a new password 2")
    assert not users.verify_password(settings, "alice", PASSWORD)
    after = users.get_user(settings, "alice")
    assert after["updated_at"] >= before["updated_at"]
    assert after["created_at"] == before["created_at"]


def test_set_password_checks_input(settings):
    users.add_user(settings, "alice", PASSWORD)

    with pytest.raises(users.InvalidPassword):
        users.set_password(settings, "alice", "short")
    with pytest.raises(users.UserNotFound):
        users.set_password(settings, "bob", PASSWORD)

    assert users.verify_password(settings, "alice", PASSWORD)


def test_list_users_sorted_without_hashes(settings):
    users.add_user(settings, "carol", PASSWORD)
    users.add_user(settings, "alice", PASSWORD)

    listed = users.list_users(settings)

    assert [row["username"] for row in listed] == ["alice", "carol"]
    assert all("password_hash" not in row for row in listed)
    assert all(row["created_at"] > 0 for row in listed)


def test_delete_user(settings):
    users.add_user(settings, "alice", PASSWORD)

    users.delete_user(settings, "alice")

    assert users.list_users(settings) == []
    assert not users.verify_password(settings, "alice", PASSWORD)
    with pytest.raises(users.UserNotFound):
        users.delete_user(settings, "alice")


def test_errors_are_tshjobs_errors(settings):
    from tshjobs.errors import TshjobsError

    with pytest.raises(TshjobsError):
        users.add_user(settings, "bad name", PASSWORD)


def test_state_file_created_private(settings):
    assert not settings.state_path.exists()

    users.add_user(settings, "alice", PASSWORD)

    assert stat.S_IMODE(settings.state_path.stat().st_mode) == 0o600


def test_existing_state_file_keeps_mode(settings):
    settings.state_path.touch(mode=0o640)
    settings.state_path.chmod(0o640)

    users.add_user(settings, "alice", PASSWORD)

    assert stat.S_IMODE(settings.state_path.stat().st_mode) == 0o640


# Login sessions


def stored_sessions(settings) -> list[dict]:
    conn = sqlite3.connect(settings.state_path)
    conn.row_factory = sqlite3.Row
    rows = [dict(row) for row in conn.execute("SELECT * FROM dashboard_sessions")]
    conn.close()
    return rows


def backdate_sessions(settings, seconds: float) -> None:
    conn = sqlite3.connect(settings.state_path)
    conn.execute(
        "UPDATE dashboard_sessions SET created_at = created_at - ?,"
        " last_seen_at = last_seen_at - ?",
        [seconds, seconds],
    )
    conn.commit()
    conn.close()


def test_session_round_trip(settings):
    users.add_user(settings, "Alice", PASSWORD)

    session_id = users.create_session(settings, "alice")

    assert users.session_username(settings, session_id) == "Alice"
    assert users.session_username(settings, session_id + "x") is None
    assert users.session_username(settings, "") is None
    rows = stored_sessions(settings)
    assert len(rows) == 1
    assert rows[0]["username"] == "Alice"
    assert session_id not in str(rows[0])


def test_session_ids_are_random(settings):
    users.add_user(settings, "alice", PASSWORD)

    ids = {users.create_session(settings, "alice") for _ in range(20)}

    assert len(ids) == 20
    assert all(len(session_id) >= 43 for session_id in ids)


def test_create_session_unknown_user(settings):
    with pytest.raises(users.UserNotFound):
        users.create_session(settings, "nobody")

    assert stored_sessions(settings) == []


def test_revoke_session(settings):
    users.add_user(settings, "alice", PASSWORD)
    open_session = users.create_session(settings, "alice")
    revoked_session = users.create_session(settings, "alice")

    assert users.revoke_session(settings, revoked_session) is True
    assert users.revoke_session(settings, revoked_session) is False
    assert users.revoke_session(settings, "unknown") is False

    assert users.session_username(settings, revoked_session) is None
    assert users.session_username(settings, open_session) == "alice"


def test_revoke_sessions_of_one_user(settings):
    users.add_user(settings, "alice", PASSWORD)
    users.add_user(settings, "bob", PASSWORD)
    alice_sessions = [users.create_session(settings, "alice") for _ in range(3)]
    bob_session = users.create_session(settings, "bob")

    assert users.revoke_sessions(settings, "ALICE") == 3
    assert users.revoke_sessions(settings, "alice") == 0
    assert users.revoke_sessions(settings, "nobody") == 0

    for session_id in alice_sessions:
        assert users.session_username(settings, session_id) is None
    assert users.session_username(settings, bob_session) == "bob"


def test_set_password_revokes_sessions(settings):
    users.add_user(settings, "alice", PASSWORD)
    session_id = users.create_session(settings, "alice")

    users.set_password(settings, "alice", "a new password 2")

    assert users.session_username(settings, session_id) is None
    assert all(row["revoked_at"] is not None for row in stored_sessions(settings))


def test_failed_set_password_keeps_sessions(settings):
    users.add_user(settings, "alice", PASSWORD)
    session_id = users.create_session(settings, "alice")

    with pytest.raises(users.UserNotFound):
        users.set_password(settings, "bob", "a new password 2")

    assert users.session_username(settings, session_id) == "alice"


def test_delete_user_revokes_sessions(settings):
    users.add_user(settings, "alice", PASSWORD)
    session_id = users.create_session(settings, "alice")

    users.delete_user(settings, "alice")
    users.add_user(settings, "alice", PASSWORD)

    assert users.session_username(settings, session_id) is None
    assert stored_sessions(settings)[0]["revoked_at"] is not None


def test_expired_session_rejected(settings):
    users.add_user(settings, "alice", PASSWORD)
    session_id = users.create_session(settings, "alice")
    backdate_sessions(settings, users.SESSION_LIFETIME + 1)

    assert users.session_username(settings, session_id) is None
    assert users.session_username(settings, session_id, lifetime=2 * 86400) == "alice"


def test_create_session_prunes_expired(settings):
    users.add_user(settings, "alice", PASSWORD)
    old = users.create_session(settings, "alice")
    users.revoke_session(settings, users.create_session(settings, "alice"))
    backdate_sessions(settings, users.SESSION_LIFETIME + 1)

    new = users.create_session(settings, "alice")

    rows = stored_sessions(settings)
    assert len(rows) == 1
    assert users.session_username(settings, new) == "alice"
    assert users.session_username(settings, old, lifetime=2 * 86400) is None


def test_last_seen_updated_once_a_minute(settings):
    users.add_user(settings, "alice", PASSWORD)
    session_id = users.create_session(settings, "alice")
    created = stored_sessions(settings)[0]["created_at"]

    users.session_username(settings, session_id)
    assert stored_sessions(settings)[0]["last_seen_at"] == created

    backdate_sessions(settings, users.LAST_SEEN_INTERVAL + 1)
    users.session_username(settings, session_id)
    row = stored_sessions(settings)[0]
    assert row["last_seen_at"] > row["created_at"] + users.LAST_SEEN_INTERVAL
