"""Markdown tables of the Zoho sync benchmark's results."""

from __future__ import annotations

import datetime

SUMMARY_HEADER = (
    "| System | wall s | calls | 429s | 429s after first window | full windows"
    " | mean use | min use | tasks succeeded | tasks failed | records"
    " | duplicates | missing | peak RSS MiB |"
)


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def summary_row(row: dict) -> str:
    records = row["records"]
    wall = "n/a" if row["wall_seconds"] is None else f"{row['wall_seconds']:,.1f}"
    if not row["complete"]:
        wall += f" (incomplete: {row['tasks']['not_final']} tasks not final)"
    cells = [
        row["system"],
        wall,
        f"{row['calls']:,}",
        f"{row['rate_limited']:,}",
        f"{row['rate_limited_after_first_window']:,}",
        str(row["full_windows"]),
        percent(row["mean_utilisation"]),
        percent(row["min_utilisation"]),
        f"{row['tasks']['succeeded']:,}",
        f"{row['tasks']['failed']:,}",
        f"{records['records']:,} of {records['expected']:,}",
        str(records["duplicate_records"]),
        str(records["missing"]),
        f"{row['peak_rss_kib'] / 1024:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def window_table(row: dict, limit: int) -> str:
    lines = [
        f"{row['system']}, calls per window:",
        "",
        "| window start (UTC) | admitted | 429s | share of the limit |",
        "|---|---|---|---|",
    ]
    for window in row["windows"]:
        start = datetime.datetime.fromtimestamp(window["start"], datetime.UTC)
        share = percent(window["admitted"] / limit)
        lines.append(
            f"| {start:%H:%M:%S} | {window['admitted']:,}"
            f" | {window['rate_limited']:,} | {share} |"
        )
    return "\n".join(lines)


def format_tables(results: dict) -> str:
    """Return the summary table and each system's table of windows."""
    systems = results["systems"]
    summary = [SUMMARY_HEADER, "|" + "---|" * 14]
    summary += [summary_row(row) for row in systems]
    limit = results["settings"]["per_minute"]
    parts = ["\n".join(summary)]
    parts += [window_table(row, limit) for row in systems]
    return "\n\n".join(parts)
