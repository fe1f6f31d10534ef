"""Fixtures of the Zoho client tests: a Redis database of their own, the
store of each run (SQLite and Redis), the sandbox and the stub server.

The test modules load this file with `pytest_plugins`.
"""

from __future__ import annotations

import pytest
import redis

from tests.zoho_support import REDIS_DATABASE, StubZoho, zoho_settings
from tshjobs.zoho.sandbox import SandboxConfig, SandboxServer


@pytest.fixture
def zoho_redis_url(redis_server):
    """The URL of an empty Redis database of the Zoho tests' own."""
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DATABASE}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request):
    """The shared store of each test run: "" for zoho.db, or a Redis URL."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("zoho_redis_url")


@pytest.fixture
def sandbox():
    """A Zoho Books sandbox with 1-second rate limit windows."""
    config = SandboxConfig(window_seconds=1.0, fault_timeout_seconds=0.5)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def sandbox_settings(tmp_path, sandbox, store_url):
    return zoho_settings(tmp_path / "data", sandbox.url, store_url)


@pytest.fixture
def stub():
    with StubZoho() as server:
        yield server
