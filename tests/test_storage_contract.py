"""Huey's own storage test suite, run against tshjobs' ReliableRedisStorage
and ReliableSqliteStorage.

The suite ships inside the huey package (huey.tests.test_storage), so it runs
from the installed huey against a redis-server of this test session's own;
the machine's Redis is never flushed. The SQLite cases use temporary files.
"""

from __future__ import annotations

import os
import sqlite3

# Huey's suite skips its consumer and TTL tests unless this is set; it is
# read when huey.tests.base is imported.
os.environ.setdefault("HUEY_SLOW_TESTS", "1")

import pytest
from huey import Huey
from huey.tests import test_storage as huey_storage_tests
from huey.tests.base import BaseTestCase
from huey.tests.test_storage import StorageTests

from tshjobs.sqlite_storage import ReliableSqliteStorage
from tshjobs.storage import ReliableRedisStorage


class TestReliableRedisStorage(StorageTests, BaseTestCase):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_url):
        type(self).redis_url = redis_url

    def setUp(self):
        # BaseTestCase.setUp builds the Huey before pytest's autouse fixture
        # runs for unittest classes, so the storage is made here instead.
        pass

    def get_huey(self):
        return Huey(
            "tshjobs-contract",
            storage_class=ReliableRedisStorage,
            url=self.redis_url,
            utc=False,
        )

    @pytest.fixture(autouse=True)
    def _storage(self, _redis):
        self.huey = self.get_huey()
        self.s = self.huey.storage
        self.s.flush_all()
        yield
        self.s.flush_all()

    @property
    def supports_ttl(self):
        return self.s.supports_hash_ttl

    def test_priority(self):
        # Like Huey's RedisStorage, this storage has no priorities.
        with pytest.raises(NotImplementedError):
            self.s.enqueue(b"item", priority=1)


class TestReliableSqliteStorage(huey_storage_tests.TestSqliteStorage):
    """Huey's SQLite suite, which adds file-level cases to StorageTests.

    Its cases name their files relative to the working directory, so each
    test runs in its own temporary directory."""

    @pytest.fixture(autouse=True)
    def _storage(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        self.huey = self.get_huey()
        self.s = self.huey.storage
        self.s.flush_all()
        yield
        self.s.flush_all()
        self.s.stop_heartbeat()
        self.s.close()

    def setUp(self):
        # As above: the storage is made by the fixture, in tmp_path.
        pass

    def get_huey(self):
        return Huey(
            "tshjobs-contract",
            storage_class=ReliableSqliteStorage,
            filename="huey_storage.db",
            timeout=3,
            utc=False,
        )

    def test_create_tables(self):
        # Huey's version of this case opens its own SqliteHuey.
        storage = ReliableSqliteStorage(filename="huey_ct.db", create_tables=False)
        try:
            with pytest.raises(sqlite3.OperationalError):
                storage.queue_size()
            storage.initialize_schema()
            assert storage.queue_size() == 0
            assert storage.inflight_items() == {}
        finally:
            storage.close()
