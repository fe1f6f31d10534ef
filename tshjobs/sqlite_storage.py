"""SQLite storage that loses no task when a consumer or worker dies mid-task.

Huey's SqliteStorage deletes a task when a worker dequeues it, so a worker
killed mid-task (OOM, `kill -9`, a power cut) loses it. Here the dequeue moves
the task row into the `inflight` table, owned by the worker's process and
thread, in one transaction, so there is no moment when the task is in neither
table. The worker deletes it (`ack`) once Huey has finished with the task. A
retry goes on the schedule in the same transaction as that deletion
(`schedule_and_ack`), and due tasks move to the queue one transaction per
batch (`move_due_to_queue`). This is `tshjobs.storage.ReliableRedisStorage`
for a queue file on this host.

An owner is a process: host, boot id, pid and start time, as in
`tshjobs.liveness`, so a reused pid never passes for a dead process. Each
process that takes tasks refreshes its row in the `heartbeat` table. A live
consumer's `recover()` puts the in-flight tasks of dead owners (process gone,
or heartbeat missing or older than the TTL) back at the dequeue end.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref

from huey.storage import SqliteStorage

from tshjobs.liveness import current_holder, holder_is_alive

logger = logging.getLogger(__name__)

# Seconds between heartbeats, and the age after which a heartbeat counts as
# missing. A process that misses HEARTBEAT_TTL / HEARTBEAT_INTERVAL beats in
# a row counts as dead.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 30.0

# Seconds a connection waits for another process's write lock before it
# raises "database is locked". Huey's default of 5 s is short for several
# worker processes, a heartbeat per process and the ERP all writing one file.
BUSY_TIMEOUT = 30.0

# Scheduled tasks moved per transaction, so a large backlog does not hold the
# write lock for long.
MOVE_DUE_BATCH = 500

# Connections a forked child inherited from its parent. SQLite's documentation
# (howtocorrupt.html) forbids carrying an open connection across fork(), and
# closing one in the child is a use too. Keeping them referenced stops the
# garbage collector from closing them.
_inherited_connections: list[sqlite3.Connection] = []


def process_id() -> str:
    """Return the owner id of this process: host|boot id|pid|start time."""
    return current_holder().rsplit("|", 1)[0]


class ReliableSqliteStorage(SqliteStorage):
    """SqliteStorage whose dequeue keeps each task in flight until `ack`."""

    table_inflight = (
        "create table if not exists inflight ("
        "id integer not null primary key, queue text not null, "
        "owner text not null, key text not null, data blob not null, "
        "priority real not null default 0.0)"
    )
    index_inflight = (
        "create index if not exists inflight_queue_key on inflight (queue, key)"
    )
    table_heartbeat = (
        "create table if not exists heartbeat ("
        "queue text not null, owner text not null, beat_at real not null, "
        "primary key (queue, owner))"
    )
    # Appended, because Huey's strict_fifo option rewrites ddl[3].
    ddl = (*SqliteStorage.ddl, table_inflight, index_inflight, table_heartbeat)

    def __init__(
        self,
        name="huey",
        filename="huey.db",
        heartbeat_ttl: float = HEARTBEAT_TTL,
        timeout: float = BUSY_TIMEOUT,
        **kwargs,
    ):
        self.heartbeat_ttl = heartbeat_ttl
        self._owner = ""
        self._owner_lock = threading.Lock()
        self._heartbeat_stop = threading.Event()
        super().__init__(name, filename, timeout=timeout, **kwargs)

        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(reference))

    def initialize_schema(self):
        with self.db(commit=True, close=True) as curs:
            for sql in self.ddl:
                curs.execute(sql)

            # Huey's schedule table has no priority, but a retry must keep
            # its task's priority when it moves back to the queue.
            curs.execute("select name from pragma_table_info('schedule')")
            if "priority" not in {row[0] for row in curs.fetchall()}:
                curs.execute(
                    "alter table schedule add column priority real not null default 0.0"
                )

    def _reset_after_fork(self) -> None:
        """Drop the parent's connection, locks and owner in a forked child.
        Only the forking thread exists in the child, so nothing races."""
        if self._conn is not None:
            _inherited_connections.append(self._conn)
        self._conn = None
        self.lock = threading.Lock()
        self._owner = ""
        self._owner_lock = threading.Lock()
        self._heartbeat_stop = threading.Event()

    # Who owns an in-flight row, and the heartbeat that shows it is alive.

    @property
    def owner(self) -> str:
        """The owner id of this process, set up with its first heartbeat."""
        if not self._owner:
            with self._owner_lock:
                if not self._owner:
                    owner = process_id()
                    # Beat before the first dequeue, so an in-flight row never
                    # exists without a heartbeat row. A failed beat raises.
                    self._beat(owner, self._heartbeat_stop)
                    self._owner = owner
                    self._start_heartbeat()
        return self._owner

    def inflight_key(self) -> str:
        """Return the calling thread's in-flight key, which is its
        `tshjobs.liveness` holder id: owner|thread ident."""
        return f"{self.owner}|{threading.get_ident()}"

    def _beat(self, owner: str, stop: threading.Event) -> None:
        with self.db(commit=True) as curs:
            # Checked under the lock, so no beat lands after stop_heartbeat.
            if stop.is_set():
                return
            curs.execute(
                "insert or replace into heartbeat (queue, owner, beat_at) "
                "values (?, ?, ?)",
                (self.name, owner, time.time()),
            )

    def _start_heartbeat(self) -> None:
        thread = threading.Thread(
            target=_beat_forever,
            args=(weakref.ref(self), self._owner, self._heartbeat_stop),
            name="tshjobs-heartbeat",
            daemon=True,
        )
        thread.start()

    def stop_heartbeat(self) -> None:
        """Stop beating, so this process's leftovers are recovered at once."""
        self._heartbeat_stop.set()
        if self._owner:
            query = "delete from heartbeat where queue = ? and owner = ?"
            self.sql(query, (self.name, self._owner), commit=True)

    # The queue.

    def dequeue(self):
        # Quick check without the write lock, as Huey's SqliteStorage does.
        if not self.sql(
            "select 1 from task where queue = ? limit 1", (self.name,), results=True
        ):
            return None

        key = self.inflight_key()
        with self.db(commit=True) as curs:
            curs.execute(
                "select id, data, priority from task where queue = ? "
                "order by priority desc, id limit 1",
                (self.name,),
            )
            row = curs.fetchone()
            if row is None:
                return None

            task_id, data, priority = row
            curs.execute("delete from task where id = ?", (task_id,))
            curs.execute(
                "insert into inflight (queue, owner, key, data, priority) "
                "values (?, ?, ?, ?, ?)",
                (self.name, self._owner, key, data, priority),
            )
            return data

    def _take_inflight(self, curs, key: str, data: bytes) -> float | None:
        """Delete one in-flight row of `key` with `data` and return its
        priority, or None when there is no such row."""
        curs.execute(
            "select id, priority from inflight "
            "where queue = ? and key = ? and data = ? order by id limit 1",
            (self.name, key, self.to_blob(data)),
        )
        row = curs.fetchone()
        if row is None:
            return None

        curs.execute("delete from inflight where id = ?", (row[0],))
        return row[1]

    def _push_front(self, curs, data: bytes, priority: float) -> None:
        """Insert a task where it is dequeued first among its priority.

        The queue is ordered by (priority desc, id), so the new row takes an
        id below every id in the table. Plain inserts still take the maximum
        id plus one, so they stay behind it."""
        curs.execute(
            "insert into task (id, queue, data, priority) "
            "select coalesce(min(id), 1) - 1, ?, ?, ? from task",
            (self.name, self.to_blob(data), priority),
        )

    def ack(self, data: bytes, key: str | None = None) -> None:
        """Delete a dequeued task's in-flight row once Huey is done with it.
        `key` is the in-flight key, by default the calling thread's."""
        key = key or self.inflight_key()
        with self.db(commit=True) as curs:
            self._take_inflight(curs, key, data)

    def requeue(self, data: bytes, key: str | None = None) -> None:
        """Put a dequeued task back where it is dequeued next, with the
        priority it had. Without an in-flight row it goes back at priority 0."""
        key = key or self.inflight_key()
        with self.db(commit=True) as curs:
            priority = self._take_inflight(curs, key, data)
            self._push_front(curs, data, priority or 0.0)

    def schedule_and_ack(self, data: bytes, eta, inflight: bytes, key: str) -> None:
        """Put a task's retry on the schedule and drop the attempt from
        `inflight` in one transaction, so that the task exists once whenever
        the worker dies. `eta` None puts it on the queue instead. The retry
        keeps the attempt's priority."""
        with self.db(commit=True) as curs:
            priority = self._take_inflight(curs, key, inflight) or 0.0
            if eta is None:
                curs.execute(
                    "insert into task (queue, data, priority) values (?, ?, ?)",
                    (self.name, self.to_blob(data), priority),
                )
            else:
                curs.execute(
                    "insert into schedule (queue, data, timestamp, priority) "
                    "values (?, ?, ?, ?)",
                    (self.name, self.to_blob(data), eta.timestamp(), priority),
                )

    def move_due_to_queue(self, ts) -> list[bytes]:
        """Move the scheduled tasks due by `ts` onto the queue, soonest
        first, and return them. Each batch moves in one transaction.

        NOTE: a task put on the schedule by Huey's `add_to_schedule`, which
        has no priority argument, moves to the queue with priority 0."""
        moved = []
        while True:
            with self.db(commit=True) as curs:
                curs.execute(
                    "select id, data, priority from schedule "
                    "where queue = ? and timestamp <= ? "
                    "order by timestamp, id limit ?",
                    (self.name, ts.timestamp(), MOVE_DUE_BATCH),
                )
                rows = curs.fetchall()
                curs.executemany(
                    "insert into task (queue, data, priority) values (?, ?, ?)",
                    [(self.name, data, priority) for _, data, priority in rows],
                )
                curs.executemany(
                    "delete from schedule where id = ?", [(row[0],) for row in rows]
                )

            moved.extend(data for _, data, _ in rows)
            if len(rows) < MOVE_DUE_BATCH:
                return moved

    def inflight_items(self) -> dict[str, list[bytes]]:
        """Return the in-flight tasks: key -> its entries, oldest first."""
        query = "select key, data from inflight where queue = ? order by id"
        items: dict[str, list[bytes]] = {}
        for key, data in self.sql(query, (self.name,), results=True):
            items.setdefault(key, []).append(data)
        return items

    def flush_queue(self):
        with self.db(commit=True) as curs:
            curs.execute("delete from task where queue = ?", (self.name,))
            curs.execute("delete from inflight where queue = ?", (self.name,))

    # Recovery.

    def recover(self) -> list[tuple[str, bytes]]:
        """Put back the tasks of dead owners and return (owner, data) pairs
        in the order they will be dequeued, oldest first per owner.

        A scan that finds the file locked for longer than the busy timeout
        stops early and returns what it moved, and the next scan goes on."""
        own = process_id()
        recovered = []
        try:
            owners = self.sql(
                "select owner from inflight where queue = ? union "
                "select owner from heartbeat where queue = ?",
                (self.name, self.name),
                results=True,
            )
            for (owner,) in owners:
                if owner != own:
                    recovered.extend(self._recover_owner(owner))
        except sqlite3.OperationalError as exc:
            logger.warning("Recovery scan of %s stopped: %s", self.filename, exc)
        return recovered

    def _recover_owner(self, owner: str) -> list[tuple[str, bytes]]:
        """Move a dead owner's in-flight tasks back to the queue and delete
        its heartbeat, judging it in the same transaction."""
        with self.db(commit=True) as curs:
            curs.execute(
                "select beat_at from heartbeat where queue = ? and owner = ?",
                (self.name, owner),
            )
            beat = curs.fetchone()
            reason = self._death_reason(owner, beat[0] if beat else None)
            if reason is None:
                return []

            curs.execute(
                "select data, priority from inflight "
                "where queue = ? and owner = ? order by id desc",
                (self.name, owner),
            )
            rows = curs.fetchall()
            # Newest first, each pushed in front of the last: the oldest task
            # is dequeued first.
            for data, priority in rows:
                self._push_front(curs, data, priority)
            for table in ("inflight", "heartbeat"):
                query = f"delete from {table} where queue = ? and owner = ?"
                curs.execute(query, (self.name, owner))

        if rows:
            # The consumer logs each task's id, and this line the reason.
            logger.info(
                "Put %d in-flight task(s) of %s back on the queue: %s",
                len(rows), owner, reason,
            )  # fmt: skip
        return [(owner, data) for data, _ in reversed(rows)]

    def _death_reason(self, owner: str, beat_at: float | None) -> str | None:
        """Return why `owner` counts as dead, or None while it lives.

        NOTE: heartbeats are wall-clock times, so a clock step forward of
        more than the TTL makes live owners look dead once."""
        # A holder id names a thread too. holder_is_alive checks that thread
        # only for this very process, which recover() skips.
        if holder_is_alive(f"{owner}|0") is False:
            return "its process has ended"
        if beat_at is None:
            return "it has no heartbeat"

        age = time.time() - beat_at
        if age > self.heartbeat_ttl:
            return f"its last heartbeat is {age:.0f} s old"
        return None


def _beat_forever(reference, owner: str, stop: threading.Event) -> None:
    """Refresh `owner`'s heartbeat until `stop` is set or the storage is
    gone. Between beats the thread keeps only a weak reference to it."""
    while not stop.wait(HEARTBEAT_INTERVAL):
        storage = reference()
        if storage is None:
            return
        try:
            storage._beat(owner, stop)
        except sqlite3.Error as exc:
            logger.warning("Heartbeat to %s failed: %s", storage.filename, exc)
        del storage


def _reset_in_child(reference) -> None:
    storage = reference()
    if storage is not None:
        storage._reset_after_fork()
