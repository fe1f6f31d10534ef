"""Stock Huey tasks of the peer baseline in bench/zoho_sync.py.

`RedisHuey` with `retries`, run by Huey's own `huey_consumer`, each task
syncing one ERP entity through `ZohoSync` and the plain client of
`bench.zoho_peer`. A 429, a Zoho server error or a failed connection
is retried after Celery's exponential backoff with full jitter, which the
task sets as its `retry_delay`. Any other error fails the task at once.

Each task writes its outcome to the Redis hash OUTCOMES_KEY, keyed by task
id, and counts its attempts in ATTEMPTS_KEY, so that the benchmark can see when
every task is final. The settings are the JSON object in ZOHO_PEER_CONFIG,
which bench.zoho_sync sets: redis_url, erp_url, accounts_url,
organization_id, client_id, client_secret, refresh_token and retries.
"""

from __future__ import annotations

import json
import os
import threading
import time

import redis
from huey import RedisHuey

from bench.zoho_peer import (
    ATTEMPTS_KEY,
    OUTCOMES_KEY,
    PlainZohoClient,
    backoff_delay,
    is_retryable,
)
from tshjobs.erp.queries import ErpRepository
from tshjobs.zoho.sync import ZohoSync

CONFIG = json.loads(os.environ["ZOHO_PEER_CONFIG"])
RETRIES = int(CONFIG["retries"])

huey = RedisHuey("zoho-peer", url=CONFIG["redis_url"], results=False)

# Per (process id, thread id): each worker keeps its own connections.
_clients: dict[tuple[int, int], PlainZohoClient] = {}
_repositories: dict[tuple[int, int], ErpRepository] = {}
_redis: dict[int, redis.Redis] = {}


@huey.task(retries=RETRIES, context=True)
def sync_customer(customer_id: int, task=None) -> str:
    return sync_entity("customer", customer_id, task)


@huey.task(retries=RETRIES, context=True)
def sync_order(order_id: int, task=None) -> str:
    return sync_entity("order", order_id, task)


def sync_entity(entity_type: str, entity_id: int, task) -> str:
    """Sync one entity; on failure set the retry delay, or mark the task
    final when no retry follows."""
    connection = redis_connection()
    connection.incr(ATTEMPTS_KEY)
    try:
        zoho_id = ZohoSync(zoho_client(), erp()).sync(entity_type, entity_id)
    except Exception as exc:
        if is_retryable(exc) and task.retries:
            task.retry_delay = backoff_delay(RETRIES - task.retries)
        else:
            # Huey would retry any exception while retries are left.
            task.retries = 0
            record_outcome(connection, task.id, "failed", f"{type(exc).__name__}")
        raise
    record_outcome(connection, task.id, "succeeded", zoho_id)
    return zoho_id


def record_outcome(connection: redis.Redis, task_id: str, state: str, detail: str):
    outcome = {"state": state, "finished_at": time.time(), "detail": detail}
    connection.hset(OUTCOMES_KEY, task_id, json.dumps(outcome))


def redis_connection() -> redis.Redis:
    pid = os.getpid()
    if pid not in _redis:
        _redis[pid] = redis.Redis.from_url(CONFIG["redis_url"])
    return _redis[pid]


def zoho_client() -> PlainZohoClient:
    key = (os.getpid(), threading.get_ident())
    if key not in _clients:
        _clients[key] = PlainZohoClient(
            CONFIG["accounts_url"],
            CONFIG["organization_id"],
            CONFIG["client_id"],
            CONFIG["client_secret"],
            CONFIG["refresh_token"],
        )
    return _clients[key]


def erp() -> ErpRepository:
    key = (os.getpid(), threading.get_ident())
    if key not in _repositories:
        _repositories[key] = ErpRepository(CONFIG["erp_url"])
    return _repositories[key]
