"""Readers of the audit database, for the dashboard and the CLI."""

from __future__ import annotations

from tshjobs.audit.schema import STATES


class AuditReadersMixin:
    """AuditLog's queries, run on its `db` (a sqlite_utils Database)."""

    def get(self, task_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM tasks WHERE id = ?", [task_id]))
        return rows[0] if rows else None

    def events(self, task_id: str) -> list[dict]:
        return list(
            self.db.query(
                "SELECT at, event, detail FROM task_events WHERE task_id = ?"
                " ORDER BY at, id",
                [task_id],
            )
        )

    def search(self, *, state=None, name=None, text=None, before=None, limit=50):
        """Return rows newest first; `before` is the (enqueued_at, id) of the
        last row already shown, for keyset paging."""
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if name:
            where.append("name = ?")
            params.append(name)
        if text:
            where.append("(id = ? OR args LIKE ? OR kwargs LIKE ? OR error LIKE ?)")
            pattern = "%" + text.replace("%", r"\%").replace("_", r"\_") + "%"
            params.extend([text, pattern, pattern, pattern])
        if before:
            where.append("(enqueued_at < ? OR (enqueued_at = ? AND id < ?))")
            params.extend([before[0], before[0], before[1]])

        sql = (
            "SELECT id, name, args, kwargs, queue, state, enqueued_at, started_at,"
            " finished_at, eta, attempts, host, pid, error, retry_of, retried_by"
            " FROM tasks"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY enqueued_at DESC, id DESC LIMIT ?"
        params.append(int(limit))
        if text:
            sql = sql.replace("LIKE ?", r"LIKE ? ESCAPE '\'")
        return list(self.db.query(sql, params))

    def counts_by_state(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for row in self.db.query("SELECT state, count(*) AS n FROM tasks GROUP BY 1"):
            counts[row["state"]] = row["n"]
        return counts

    def task_names(self) -> list[str]:
        rows = self.db.query("SELECT DISTINCT name FROM tasks ORDER BY name")
        return [row["name"] for row in rows]

    def actions(self, limit=100) -> list[dict]:
        return list(
            self.db.query(
                "SELECT * FROM operator_actions ORDER BY at DESC, id DESC LIMIT ?",
                [int(limit)],
            )
        )
