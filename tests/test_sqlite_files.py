"""The shared SQLite file set-up."""

from __future__ import annotations

import threading

from tshjobs import sqlite_files


def test_new_file_opened_by_many_threads_at_once(tmp_path):
    path = tmp_path / "new.db"
    barrier = threading.Barrier(8)
    errors = []

    def open_file():
        barrier.wait()
        try:
            conn = sqlite_files.connect(path, timeout=10.0)
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.close()
        except Exception as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=open_file) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    conn = sqlite_files.connect(path, timeout=10.0)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
