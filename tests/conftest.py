"""Shared fixtures: real Redis, PostgreSQL and SQLite, and test settings."""

from __future__ import annotations

import os
import secrets

import pytest

from tests.services import RedisServer, create_pg_database, drop_pg_database
from tshjobs import settings as settings_module


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of the session's own, flushed before each test."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def pg_url():
    """An empty PostgreSQL database of the test's own."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def base_env(tmp_path):
    """Environment for a tshjobs process: data in tmp_path, no env file."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return {
        "TSHJOBS_ENV_FILE": "",
        "TSHJOBS_DATA_DIR": str(data_dir),
        "TSHJOBS_SECRET_KEY": secrets.token_hex(32),
        "TSHJOBS_ERP_DATABASE_URL": f"sqlite:///{tmp_path / 'erp.db'}",
    }


@pytest.fixture
def settings_env(base_env, monkeypatch):
    """Apply base_env to this process and reload the settings."""
    for name in list(os.environ):
        if name.startswith("TSHJOBS_") and name != "TSHJOBS_TEST_PG_URL":
            monkeypatch.delenv(name)
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    settings_module.reset_settings()
    yield base_env
    settings_module.reset_settings()


@pytest.fixture
def redis_env(settings_env, monkeypatch):
    """Return a function that applies settings_env, a Redis URL, the task
    modules and the worker count to this process, builds the Huey for them,
    and returns that environment."""
    # Imported on use, so that test files without Redis do not load the queue.
    from tshjobs.queue import get_huey
    from tshjobs.settings import load_settings

    def apply(redis_url: str, task_modules: str, workers: int) -> dict[str, str]:
        values = {
            **settings_env,
            "TSHJOBS_REDIS_URL": redis_url,
            "TSHJOBS_TASK_MODULES": task_modules,
            "TSHJOBS_WORKERS": str(workers),
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_huey(load_settings())
        return values

    return apply
