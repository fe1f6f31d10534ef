"""Connections to the ERP database: PostgreSQL through psycopg 3, or SQLite.

`connect(url)` returns a `Database` with one small API for both: run a named
query from queries.sql (or the admin's override file) with a dict of named
parameters, get rows as dicts, group statements in `transaction()`, `close()`.
Outside a transaction every statement commits on its own.

Threads and processes: one `Database` object may be shared by every thread of
a process. Each thread gets its own connection, opened on first use and kept
until `close()`. Connections of threads that have ended are closed when the
next connection opens. In a child process made by fork (Huey process workers),
the object opens new connections and never uses or closes the ones inherited
from the parent, because those belong to the parent's sessions.

SQLite connections use WAL, foreign keys and a busy timeout. Parameters are
stored the way schema_sqlite.sql expects: a Decimal as its canonical
two-decimal text, a date as 'YYYY-MM-DD', a datetime as UTC
'YYYY-MM-DD HH:MM:SS'. Values read back are left as stored; tshjobs.erp.rows
converts them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psycopg
from psycopg.rows import dict_row

from tshjobs.erp.named_queries import QueryCatalog, load_queries, to_pyformat
from tshjobs.erp.sqlite_values import sqlite_params, sqlite_value
from tshjobs.erp.urls import dialect_of, redact_url, scrub_password, sqlite_path
from tshjobs.errors import ConfigError, TemporaryError

log = logging.getLogger(__name__)

SCHEMA_FILES = {
    "postgresql": Path(__file__).with_name("schema_postgres.sql"),
    "sqlite": Path(__file__).with_name("schema_sqlite.sql"),
}
MIN_SQLITE_VERSION = (3, 35, 0)

# Any 64-bit number works, as long as nothing else in the ERP database uses it
# as an advisory lock key.
_SCHEMA_LOCK_KEY = 0x7473686A6F6273

# Connections inherited by a forked child. They stay referenced here until
# the process exits so that nothing closes them in the child.
_inherited_connections: list[object] = []
_live_databases: weakref.WeakSet[Database] = weakref.WeakSet()


class ErpUnavailable(TemporaryError):
    """Raised when the ERP database cannot be reached, dropped the connection,
    or stayed locked longer than the busy timeout."""


@dataclass
class _ThreadConnection:
    """A connection and the thread that opened it."""

    raw: psycopg.Connection | sqlite3.Connection
    thread: threading.Thread
    transaction_depth: int = 0


class Database:
    """The ERP database behind one URL, with a connection per thread.

    Build it with `connect()`. Every method may be called from any thread.
    """

    def __init__(
        self,
        url: str,
        queries: QueryCatalog | None = None,
        *,
        connect_timeout: float = 10.0,
        busy_timeout: float = 10.0,
    ):
        self.url = url
        self.dialect = dialect_of(url)
        self.queries = queries if queries is not None else load_queries()
        self.connect_timeout = connect_timeout
        self.busy_timeout = busy_timeout
        self._sqlite_path = sqlite_path(url) if self.dialect == "sqlite" else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_ThreadConnection] = []
        self._closed = False
        _live_databases.add(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Database {redact_url(self.url)}>"

    # Named queries

    def sql(self, name: str) -> str:
        """Return the SQL text of a named query for this database's dialect."""
        return self.queries.sql(name, self.dialect)

    def fetch_all(self, name: str, params: dict | None = None) -> list[dict]:
        """Run a named query and return its rows as dicts."""
        return self.fetch_all_sql(self.sql(name), params)

    def fetch_one(self, name: str, params: dict | None = None) -> dict | None:
        """Run a named query and return its first row, or None."""
        rows = self.fetch_all(name, params)
        return rows[0] if rows else None

    def execute(self, name: str, params: dict | None = None) -> int:
        """Run a named statement and return the number of rows it changed."""
        return self.execute_sql(self.sql(name), params)

    def execute_many(self, name: str, params_list: Sequence[dict]) -> None:
        """Run a named statement once per parameter dict, in one transaction."""
        sql = self.sql(name)
        with self.transaction():
            state = self._connection()
            with self._translate_errors():
                if self.dialect == "postgresql":
                    with state.raw.cursor() as cursor:
                        cursor.executemany(to_pyformat(sql), params_list)
                else:
                    state.raw.executemany(
                        sql, [sqlite_params(params) for params in params_list]
                    )

    # Ad-hoc SQL with :name placeholders, for the schema, the seed and tests

    def fetch_all_sql(self, sql: str, params: dict | None = None) -> list[dict]:
        """Run one statement and return its rows as dicts (none for a
        statement without a result)."""
        state = self._connection()
        with self._translate_errors():
            if self.dialect == "postgresql":
                with state.raw.cursor(row_factory=dict_row) as cursor:
                    cursor.execute(to_pyformat(sql), params or {})
                    return cursor.fetchall() if cursor.description else []

            cursor = state.raw.execute(sql, sqlite_params(params))
            try:
                if cursor.description is None:
                    return []
                columns = [column[0] for column in cursor.description]
                return [dict(zip(columns, row)) for row in cursor.fetchall()]
            finally:
                cursor.close()

    def execute_sql(self, sql: str, params: dict | None = None) -> int:
        """Run one statement and return the number of rows it changed."""
        state = self._connection()
        with self._translate_errors():
            if self.dialect == "postgresql":
                with state.raw.cursor() as cursor:
                    cursor.execute(to_pyformat(sql), params or {})
                    return cursor.rowcount

            cursor = state.raw.execute(sql, sqlite_params(params))
            try:
                return cursor.rowcount
            finally:
                cursor.close()

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence]
    ) -> None:
        """Insert rows of values in `columns` order, fast: COPY on PostgreSQL,
        one prepared INSERT on SQLite. Runs in one transaction."""
        quoted_table = _quote_identifier(table)
        quoted_columns = ", ".join(_quote_identifier(column) for column in columns)
        with self.transaction():
            state = self._connection()
            with self._translate_errors():
                if self.dialect == "postgresql":
                    statement = f"COPY {quoted_table} ({quoted_columns}) FROM STDIN"
                    with state.raw.cursor() as cursor, cursor.copy(statement) as copy:
                        for row in rows:
                            copy.write_row(row)
                    return

                marks = ", ".join("?" for _ in columns)
                state.raw.executemany(
                    f"INSERT INTO {quoted_table} ({quoted_columns}) VALUES ({marks})",
                    ([sqlite_value(value) for value in row] for row in rows),
                )

    # Transactions and schema

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the statements of the block, in this thread, as one transaction.

        Commits when the block ends, rolls back when it raises. Nested blocks
        become savepoints. On SQLite the transaction starts with BEGIN
        IMMEDIATE, which takes the write lock at once (waiting up to the busy
        timeout). A transaction therefore cannot fail halfway because another
        writer holds the lock it needs to upgrade to.
        """
        state = self._connection()
        if self.dialect == "postgresql":
            with self._translate_errors(), state.raw.transaction():
                yield
            return

        with self._sqlite_transaction(state):
            yield

    def init_schema(self) -> None:
        """Create the reference ERP tables and indexes that do not exist yet."""
        script = SCHEMA_FILES[self.dialect].read_text(encoding="utf-8")
        state = self._connection()
        with self._translate_errors():
            if self.dialect == "postgresql":
                # Two processes creating the same table at once would collide
                # in the system catalogue, so the schema is created under a lock.
                with state.raw.transaction():
                    state.raw.execute(
                        "SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,)
                    )
                    state.raw.execute(script)
                return

            if state.transaction_depth:
                raise RuntimeError("init_schema() cannot run inside a transaction")
            try:
                state.raw.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")
            except BaseException:
                if state.raw.in_transaction:
                    state.raw.rollback()
                raise
        log.debug("ERP schema ready in %s", redact_url(self.url))

    def close(self) -> None:
        """Close every connection this process opened. The object cannot be
        used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for state in connections:
            _close_quietly(state.raw)

    # Connections

    def _connection(self) -> _ThreadConnection:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

        state = getattr(self._local, "state", None)
        if state is not None and not _is_broken(state.raw):
            return state

        if state is not None:
            log.warning(
                "ERP connection to %s was lost; opening a new one",
                redact_url(self.url),
            )
            self._forget(state)

        state = _ThreadConnection(self._open(), threading.current_thread())
        self._local.state = state
        self._prune_and_register(state)
        return state

    def _open(self) -> psycopg.Connection | sqlite3.Connection:
        if self.dialect == "postgresql":
            try:
                connection = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, round(self.connect_timeout)),
                )
            except psycopg.OperationalError as exc:
                raise ErpUnavailable(
                    f"cannot connect to the ERP database {redact_url(self.url)}: "
                    f"{scrub_password(str(exc).strip(), self.url)}"
                ) from None
        else:
            connection = self._open_sqlite()
        log.debug(
            "opened ERP connection to %s in thread %s",
            redact_url(self.url),
            threading.current_thread().name,
        )
        return connection

    def _open_sqlite(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} is too old for the ERP queries, "
                "which use RETURNING: SQLite 3.35 or later is required"
            )

        try:
            connection = sqlite3.connect(
                self._sqlite_path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"cannot open the ERP database {self._sqlite_path}: {exc}"
            ) from None

        connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA foreign_keys = ON")
        # In WAL mode NORMAL cannot corrupt the file. A power cut may lose the
        # last commits.
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    def _prune_and_register(self, state: _ThreadConnection) -> None:
        with self._lock:
            ended = [item for item in self._connections if not item.thread.is_alive()]
            self._connections = [
                item for item in self._connections if item.thread.is_alive()
            ]
            self._connections.append(state)
        for item in ended:
            _close_quietly(item.raw)

    def _forget(self, state: _ThreadConnection) -> None:
        with self._lock:
            if state in self._connections:
                self._connections.remove(state)
        _close_quietly(state.raw)

    def _after_fork_in_child(self) -> None:
        _inherited_connections.extend(state.raw for state in self._connections)
        self._connections = []
        self._local = threading.local()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _sqlite_transaction(self, state: _ThreadConnection) -> Iterator[None]:
        connection = state.raw
        if state.transaction_depth == 0:
            with self._translate_errors():
                connection.execute("BEGIN IMMEDIATE")
            savepoint = None
        else:
            savepoint = f"tshjobs_{state.transaction_depth}"
            connection.execute(f"SAVEPOINT {savepoint}")
        state.transaction_depth += 1

        try:
            yield
        except BaseException:
            state.transaction_depth -= 1
            if savepoint is None:
                connection.execute("ROLLBACK")
            else:
                connection.execute(f"ROLLBACK TO {savepoint}")
                connection.execute(f"RELEASE {savepoint}")
            raise

        state.transaction_depth -= 1
        if savepoint is not None:
            connection.execute(f"RELEASE {savepoint}")
            return
        try:
            with self._translate_errors():
                connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """Turn lost connections and lock timeouts into ErpUnavailable, so
        that tasks retry them. Other database errors pass unchanged."""
        try:
            yield
        except psycopg.OperationalError as exc:
            raise ErpUnavailable(
                f"ERP database {redact_url(self.url)} failed: "
                f"{scrub_password(str(exc).strip(), self.url)}"
            ) from exc
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "locked" in message or "busy" in message:
                raise ErpUnavailable(
                    f"ERP database {self._sqlite_path} is locked: {message}"
                ) from exc
            raise


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_broken(connection) -> bool:
    if isinstance(connection, psycopg.Connection):
        return connection.closed or connection.broken
    return False


def _close_quietly(connection) -> None:
    try:
        connection.close()
    except (psycopg.Error, sqlite3.Error) as exc:
        log.warning("closing an ERP connection failed: %s", exc)


def _reset_databases_after_fork() -> None:
    for database in list(_live_databases):
        database._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_databases_after_fork)


def connect(
    url: str,
    queries: QueryCatalog | None = None,
    *,
    connect_timeout: float = 10.0,
    busy_timeout: float = 10.0,
) -> Database:
    """Open the ERP database at `url` and return a `Database`.

    `queries` defaults to the built-in queries (see load_queries for an
    override file). The calling thread's connection opens at once, so a wrong
    URL or an unreachable server fails here: ConfigError for a malformed URL
    or unopenable SQLite file, ErpUnavailable for a PostgreSQL server that
    cannot be reached. `connect_timeout` (PostgreSQL, whole seconds) and
    `busy_timeout` (SQLite) are in seconds.
    """
    database = Database(
        url, queries, connect_timeout=connect_timeout, busy_timeout=busy_timeout
    )
    database._connection()
    return database


def init_schema(url: str) -> None:
    """Create the reference ERP schema at `url`; tables that exist are kept."""
    with connect(url) as database:
        database.init_schema()
