"""Dashboard users in the appliance's SQLite database."""

from __future__ import annotations

import sqlite3
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
