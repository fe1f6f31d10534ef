"""Records of the sandbox organisation, in memory and optionally in SQLite.

Every record lives in a dict in memory. With a state file, each change is
also written through to SQLite in the same call, and the file is read back at
start, so records, ids and document numbers survive a restart.
"""

from __future__ import annotations

import copy
import sqlite3
import threading
from pathlib import Path

from tshjobs.zoho.sandbox import amounts

ENTITIES = ("contacts", "items", "salesorders", "invoices", "customerpayments")

# Record ids look like Zoho's: long strings of digits.
ID_BASE = 460_000_000_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (entity, id)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class RecordStore:
    """Records by entity and id, in creation order, safe to share by threads.

    `lock` is re-entrant: hold it around a read-check-write sequence (a unique
    check followed by a put) so no other request slips in between.
    """

    def __init__(self, path: str | Path | None = None):
        self.lock = threading.RLock()
        self._records: dict[str, dict[str, dict]] = {entity: {} for entity in ENTITIES}
        self._counters: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._open(Path(path))

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

        for entity, record_id, body in self._db.execute(
            "SELECT entity, id, body FROM records ORDER BY rowid"
        ):
            if entity in self._records:
                self._records[entity][record_id] = amounts.loads(body)
        for name, value in self._db.execute("SELECT name, value FROM counters"):
            self._counters[name] = value

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def next_number(self, name: str) -> int:
        """Return the next value of the named counter, starting at 1."""
        with self.lock:
            value = self._counters.get(name, 0) + 1
            self._counters[name] = value
            if self._db is not None:
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )
            return value

    def new_id(self) -> str:
        return str(ID_BASE + self.next_number("id"))

    def get(self, entity: str, record_id: str) -> dict | None:
        """Return a copy of the record, or None when no record has this id."""
        with self.lock:
            record = self._records[entity].get(record_id)
            return copy.deepcopy(record) if record is not None else None

    def all(self, entity: str) -> list[dict]:
        """Return copies of the entity's records in creation order."""
        with self.lock:
            return copy.deepcopy(list(self._records[entity].values()))

    def scan(self, entity: str) -> list[dict]:
        """Return the entity's stored records themselves, not copies: for
        read-only scans by a caller that has acquired `lock`."""
        with self.lock:
            return list(self._records[entity].values())

    def count(self, entity: str) -> int:
        with self.lock:
            return len(self._records[entity])

    def put(self, entity: str, record_id: str, record: dict) -> None:
        self.put_many([(entity, record_id, record)])

    def put_many(self, changes: list[tuple[str, str, dict]]) -> None:
        """Store (entity, id, record) changes together: in SQLite, in one
        transaction, so a payment and the invoices it pays change as one."""
        with self.lock:
            if self._db is not None:
                rows = [
                    (entity, record_id, amounts.dumps(record))
                    for entity, record_id, record in changes
                ]
                with self._transaction():
                    self._db.executemany(
                        "INSERT INTO records (entity, id, body) VALUES (?, ?, ?) "
                        "ON CONFLICT (entity, id) DO UPDATE SET body = excluded.body",
                        rows,
                    )

            for entity, record_id, record in changes:
                self._records[entity][record_id] = copy.deepcopy(record)

    def clear(self) -> None:
        """Delete every record and reset the id and number counters."""
        with self.lock:
            if self._db is not None:
                with self._transaction():
                    self._db.execute("DELETE FROM records")
                    self._db.execute("DELETE FROM counters")
            for records in self._records.values():
                records.clear()
            self._counters.clear()

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT on an autocommit connection, ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, error_type, error, traceback):
        self.db.execute("ROLLBACK" if error_type else "COMMIT")
