"""Redis storage that loses no task when a consumer or worker dies mid-task.

Stock Huey pops a task off the Redis list, so a worker killed while it runs
the task (OOM, `kill -9`, a power cut) loses it without a trace. Here the pop
is a `BLMOVE` into an in-flight list of the worker's own, in one atomic Redis
command, so there is no moment when the task is in neither list. The worker
removes it from that list (`ack`) once Huey has finished with the task. A
failed attempt's retry goes on the schedule in the same transaction as that
removal (`schedule_and_ack`), and due tasks move from the schedule to the
queue inside Redis (`move_due_to_queue`), so no kill leaves a task twice or
nowhere.

Each process that takes tasks keeps a heartbeat key alive while it runs. A
live consumer calls `recover()` now and then: the in-flight lists of
processes whose heartbeat expired, or that are gone from this host, go back
onto the queue, at the end that is dequeued next.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from huey.storage import RedisStorage
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Seconds between heartbeats, and how long a heartbeat lives. A process that
# misses HEARTBEAT_TTL / HEARTBEAT_INTERVAL beats in a row counts as dead.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 30

# Moves every entry of an in-flight list (KEYS[1]) back onto the queue
# (KEYS[2]) at its dequeue end, and returns them.
RECOVER_LUA = """
local moved = {}
while true do
    local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
    if not item then break end
    table.insert(moved, item)
end
return moved
"""


# Moves at most ARGV[2] scheduled tasks due by ARGV[1] from the schedule
# (KEYS[1]) to the enqueue end of the queue (KEYS[2]), and returns them. One
# script, so a consumer killed while its scheduler works loses none.
MOVE_DUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(due) do
    redis.call('LPUSH', KEYS[2], item)
    redis.call('ZREM', KEYS[1], item)
end
return due
"""

# Tasks moved per script call, so that a large backlog does not block Redis.
MOVE_DUE_BATCH = 500


class ReliableRedisStorage(RedisStorage):
    """RedisStorage whose dequeue keeps each task in flight until `ack`."""

    def __init__(self, *args, heartbeat_ttl: int = HEARTBEAT_TTL, **kwargs):
        super().__init__(*args, **kwargs)
        self.heartbeat_ttl = heartbeat_ttl
        self.inflight_prefix = f"huey.inflight.{self.name}|"
        self.heartbeat_prefix = f"huey.heartbeat.{self.name}|"
        self._recover = self.conn.register_script(RECOVER_LUA)
        self._move_due = self.conn.register_script(MOVE_DUE_LUA)
        self._owner_pid = None
        self._owner = ""
        self._heartbeat_stop = threading.Event()
        self._lock = threading.Lock()

    # Who owns an in-flight list: this host, this process, and a token, so a
    # reused pid is never mistaken for the process that died.

    @property
    def owner(self) -> str:
        if self._owner_pid != os.getpid():
            with self._lock:
                if self._owner_pid != os.getpid():
                    token = uuid.uuid4().hex[:8]
                    self._owner = f"{socket.gethostname()}:{os.getpid()}:{token}"
                    self._owner_pid = os.getpid()
                    self._heartbeat_stop = threading.Event()
                    self._start_heartbeat()
        return self._owner

    def inflight_key(self) -> str:
        return f"{self.inflight_prefix}{self.owner}|{threading.current_thread().name}"

    def heartbeat_key(self, owner: str) -> str:
        return self.heartbeat_prefix + owner

    def _beat(self) -> None:
        self.conn.set(self.heartbeat_key(self._owner), b"1", ex=self.heartbeat_ttl)

    def _start_heartbeat(self) -> None:
        try:
            self._beat()
        except RedisError as exc:
            logger.warning("Heartbeat to Redis failed: %s", exc)

        stop = self._heartbeat_stop

        def beat_forever():
            while not stop.wait(HEARTBEAT_INTERVAL):
                try:
                    self._beat()
                except RedisError as exc:
                    logger.warning("Heartbeat to Redis failed: %s", exc)

        thread = threading.Thread(target=beat_forever, name="tshjobs-heartbeat")
        thread.daemon = True
        thread.start()

    def stop_heartbeat(self) -> None:
        """Stop beating, so this process's leftovers are recovered at once."""
        self._heartbeat_stop.set()
        if self._owner:
            self.conn.delete(self.heartbeat_key(self._owner))

    # The queue.

    def dequeue(self):
        key = self.inflight_key()
        try:
            if self.blocking:
                return self.conn.blmove(
                    self.queue_key, key, self.read_timeout, "RIGHT", "LEFT"
                )
            return self.conn.lmove(self.queue_key, key, "RIGHT", "LEFT")
        except TimeoutError:
            return None

    def ack(self, data: bytes, key: str | None = None) -> None:
        """Forget a dequeued task: Huey is done with it. `key` is the
        in-flight list, by default the calling thread's."""
        self.conn.lrem(key or self.inflight_key(), 1, data)

    def requeue(self, data: bytes, key: str | None = None) -> None:
        """Put a dequeued task back at the dequeue end of the queue."""
        pipe = self.conn.pipeline()
        pipe.lrem(key or self.inflight_key(), 1, data)
        pipe.rpush(self.queue_key, data)
        pipe.execute()

    def schedule_and_ack(self, data: bytes, eta, inflight: bytes, key: str) -> None:
        """Put a task's retry on the schedule and drop the attempt from its
        in-flight list in one transaction, so that the task exists once
        whenever the worker dies. `eta` None puts it on the queue instead."""
        pipe = self.conn.pipeline(transaction=True)
        if eta is None:
            pipe.lpush(self.queue_key, data)
        else:
            pipe.zadd(self.schedule_key, {data: self.convert_ts(eta)})
        pipe.lrem(key, 1, inflight)
        pipe.execute()

    def move_due_to_queue(self, ts) -> list[bytes]:
        """Move the scheduled tasks due by `ts` onto the queue, and return
        them. Each batch moves in one atomic script."""
        moved = []
        unix_ts = self.convert_ts(ts)
        while True:
            batch = self._move_due(
                keys=[self.schedule_key, self.queue_key],
                args=[unix_ts, MOVE_DUE_BATCH],
            )
            moved.extend(batch)
            if len(batch) < MOVE_DUE_BATCH:
                return moved

    def inflight_items(self) -> dict[str, list[bytes]]:
        """Return every in-flight list: key -> its entries."""
        items = {}
        for key in self.conn.scan_iter(match=self.inflight_prefix + "*"):
            entries = self.conn.lrange(key, 0, -1)
            if entries:
                items[key.decode()] = entries
        return items

    def _owner_is_dead(self, owner: str) -> bool:
        if self.conn.exists(self.heartbeat_key(owner)):
            host, _, rest = owner.partition(":")
            pid = int(rest.split(":", 1)[0])
            if host != socket.gethostname() or pid == os.getpid():
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        return True

    def recover(self) -> list[tuple[str, bytes]]:
        """Put back the tasks of dead owners; return (owner, data) pairs."""
        recovered = []
        for key in self.conn.scan_iter(match=self.inflight_prefix + "*"):
            _, owner, _thread = key.decode().split("|", 2)
            if owner == self._owner or not self._owner_is_dead(owner):
                continue
            for data in self._recover(keys=[key, self.queue_key]):
                recovered.append((owner, data))
        return recovered

    def flush_queue(self):
        super().flush_queue()
        for key in self.conn.scan_iter(match=self.inflight_prefix + "*"):
            self.conn.delete(key)
