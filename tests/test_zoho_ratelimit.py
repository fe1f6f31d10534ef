"""The shared Zoho rate limiter: calls per window, 429s, the daily limit and
concurrent calls.

Each test runs against the SQLite store and against Redis. Windows last one
or two seconds; the checks count calls per window, never elapsed time.
"""

from __future__ import annotations

import datetime
import threading
import time
import zoneinfo

import pytest

from tests.zoho_support import client_for, run_threads, zoho_settings
from tshjobs.errors import ZohoConnectionError, ZohoDailyLimitReached, ZohoRateLimited
from tshjobs.zoho.ratelimit import RateLimiter, limit_store, rate_limit_status

pytest_plugins = ["tests.zoho_fixtures"]


@pytest.fixture
def store(tmp_path, store_url):
    return limit_store(zoho_settings(tmp_path / "data", "", store_url))


def make_limiter(store, **options) -> RateLimiter:
    limits = {
        "requests_per_window": 100,
        "daily_limit": 1000,
        "max_concurrent": 10,
        "window_seconds": 1.0,
    }
    limits.update(options)
    return RateLimiter(store, "60012345", **limits)


def window_counts(sandbox) -> list[int]:
    stats = sandbox.stats()
    return [*stats["requests_per_window"], stats["requests_in_window"]]


def test_burst_of_8_threads_within_window_limit(tmp_path, sandbox, store_url):
    sandbox.set_config(requests_per_minute=3, window_seconds=2.0)
    settings = zoho_settings(
        tmp_path / "data", sandbox.url, store_url, zoho_requests_per_minute=3
    )

    def call(index):
        with client_for(settings, window_seconds=2.0) as client:
            return client.get("/contacts")["code"]

    results = run_threads(8, call)

    assert results == [0] * 8
    assert sandbox.stats()["rate_limited"] == 0
    assert sum(window_counts(sandbox)) == 8
    assert max(window_counts(sandbox)) <= 3


def test_429_makes_all_workers_wait(sandbox_settings, sandbox):
    sandbox.inject("429", count=1)
    with (
        client_for(sandbox_settings) as client,
        pytest.raises(ZohoRateLimited) as caught,
    ):
        client.get("/contacts")
    next_window = caught.value.retry_at.timestamp()
    started: list[float] = []

    def call(index):
        with client_for(sandbox_settings) as client:
            original = client.limiter.acquire

            def acquire(*args):
                slot = original(*args)
                started.append(time.time())
                return slot

            client.limiter.acquire = acquire
            return client.get("/contacts")["code"]

    results = run_threads(8, call)

    assert caught.value.status == 429
    assert results == [0] * 8
    assert sandbox.stats()["rate_limited"] == 1
    assert min(started) >= next_window


def test_429_storm_one_call_per_window(sandbox_settings, sandbox):
    # A 1-second storm touches at most 2 windows of 1 second. Each worker
    # retries as the task's policy would, at the time the error names.
    sandbox.storm_429(1.0)

    def call(index):
        rate_limited = 0
        with client_for(sandbox_settings) as client:
            while True:
                try:
                    client.get("/contacts")
                    return rate_limited
                except ZohoRateLimited as exc:
                    rate_limited += 1
                    time.sleep(max(0.0, exc.retry_at.timestamp() - time.time()))

    results = run_threads(8, call)

    assert all(isinstance(count, int) for count in results)
    assert max(results) <= 2
    assert sandbox.stats()["rate_limited"] == sum(results)


def test_window_full_waits_for_next_window(store):
    limiter = make_limiter(store, requests_per_window=2)

    windows = []
    for _ in range(3):
        with limiter.slot():
            windows.append(limiter._window(time.time())[0])

    assert windows[2] > windows[0]


def test_slots_never_exceed_max_concurrent(store):
    limiter = make_limiter(store, max_concurrent=3)
    in_use, max_in_use = [0], [0]
    lock = threading.Lock()

    def hold(index):
        for _ in range(3):
            with limiter.slot():
                with lock:
                    in_use[0] += 1
                    max_in_use[0] = max(max_in_use[0], in_use[0])
                time.sleep(0.01)
                with lock:
                    in_use[0] -= 1

    run_threads(8, hold)

    assert max_in_use[0] <= 3


def test_concurrent_cap_kept_at_sandbox(tmp_path, sandbox, store_url):
    sandbox.set_config(max_concurrent=2)
    settings = zoho_settings(
        tmp_path / "data", sandbox.url, store_url, zoho_max_concurrent=2
    )
    with client_for(settings) as client:
        client.get("/contacts")
    # Each of the next 6 calls is held for half a second, then dropped.
    sandbox.inject("timeout", count=6)

    def call(index):
        with client_for(settings) as client:
            return client.get("/contacts")

    results = run_threads(6, call)

    assert all(isinstance(result, ZohoConnectionError) for result in results)
    assert sandbox.stats()["max_concurrent_seen"] <= 2
    assert sandbox.stats()["rate_limited"] == 0


def test_killed_worker_slot_expires(store):
    limiter = make_limiter(store, max_concurrent=1, slot_ttl=0.2)
    limiter.acquire()  # never released, as by a killed worker

    slot = limiter.acquire()

    assert slot


def test_acquire_gives_up_after_max_wait(store):
    limiter = make_limiter(store, max_concurrent=1, slot_ttl=60, max_wait=0.2)
    limiter.acquire()

    with pytest.raises(ZohoRateLimited) as caught:
        limiter.acquire("GET", "/contacts")

    assert caught.value.retry_at.timestamp() > time.time()
    assert "GET /contacts" in str(caught.value)


def test_turned_away_callers_spread_over_later_windows(store):
    # A fixed clock in the middle of a 60 s window, so the window stays full.
    now = 1_800_000_030.0
    limiter = make_limiter(
        store, requests_per_window=3, window_seconds=60.0, max_wait=0,
        clock=lambda: now,
    )  # fmt: skip
    for _ in range(3):
        limiter.release(limiter.acquire())

    retry_at = []
    for _ in range(7):
        with pytest.raises(ZohoRateLimited) as caught:
            limiter.acquire()
        retry_at.append(caught.value.retry_at.timestamp())

    window_end = 1_800_000_060.0
    windows = [int((at - window_end) // 60) for at in retry_at]
    assert windows == [0, 0, 0, 1, 1, 1, 2]
    assert retry_at == sorted(retry_at)
    assert len({round(at) for at in retry_at[:3]}) == 3


def test_daily_cap_raises_daily_limit_reached(tmp_path, sandbox, store_url):
    settings = zoho_settings(
        tmp_path / "data", sandbox.url, store_url, zoho_daily_limit=3
    )

    with client_for(settings) as client:
        for _ in range(3):
            client.get("/contacts")
        with pytest.raises(ZohoDailyLimitReached) as caught:
            client.get("/contacts")
    status = rate_limit_status(settings)

    assert sandbox.stats()["requests"] == 3
    assert caught.value.retry_at.timestamp() > time.time()
    assert status.daily_limit_reached
    assert status.daily_used == 3
    assert status.message.startswith("daily Zoho limit reached, resumes at ")


def test_daily_count_from_zoho_headers(sandbox_settings, sandbox):
    sandbox.set_config(daily_limit=2)

    with client_for(sandbox_settings) as client:
        client.get("/contacts")
        client.get("/contacts")
        with pytest.raises(ZohoDailyLimitReached) as caught:
            client.get("/contacts")
        status = client.limiter.status()

    assert sandbox.stats()["requests"] == 2
    assert sandbox.stats()["rate_limited"] == 0
    assert caught.value.retry_at.timestamp() > time.time()
    assert status.daily_remaining == 0
    assert status.daily_limit_reached


def test_daily_limit_resets_at_midnight_in_time_zone(store):
    limiter = make_limiter(store, daily_limit=1, time_zone="Asia/Baghdad")
    zone = zoneinfo.ZoneInfo("Asia/Baghdad")
    tomorrow = datetime.datetime.now(zone).date() + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(tomorrow, datetime.time(), zone)
    limiter.acquire()

    with pytest.raises(ZohoDailyLimitReached) as caught:
        limiter.acquire()

    assert caught.value.retry_at == midnight
    assert "Asia/Baghdad" in str(caught.value)


def test_daily_reset_header_moves_reset_time(store):
    limiter = make_limiter(store)
    limiter.record_headers(
        {"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "7200"}
    )

    with pytest.raises(ZohoDailyLimitReached) as caught:
        limiter.acquire()

    assert caught.value.retry_at.timestamp() > time.time() + 7000


def test_unknown_time_zone_counts_in_utc(store):
    limiter = make_limiter(store, time_zone="Mars/Olympus")

    assert limiter.time_zone == "UTC"


def test_status_without_zoho(tmp_path):
    settings = zoho_settings(tmp_path, "", zoho_client_id="")

    assert rate_limit_status(settings) is None
