"""Jinja filters that turn audit-log values into text.

They return plain strings, never Markup, so Jinja escapes whatever a task
put into its arguments or error.
"""

from __future__ import annotations

import datetime
import json

from flask import Flask


def format_time(seconds: float | None) -> str:
    """Format unix seconds as `YYYY-MM-DD HH:MM:SS` in UTC."""
    if seconds is None:
        return "–"
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """Format a span of seconds as `0.42 s`, `3 min 5 s` or `2 h 3 min`."""
    if seconds is None or seconds < 0:
        return "–"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"

    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"

    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return end - start


def format_call(args_json: str | None, kwargs_json: str | None) -> str:
    """Format stored JSON arguments as one line: `1, "x", force=true`."""
    parts = []
    try:
        args = json.loads(args_json or "[]")
        kwargs = json.loads(kwargs_json or "{}")
    except ValueError:
        return f"{args_json} {kwargs_json}"

    parts.extend(json.dumps(value, ensure_ascii=False) for value in args)
    for name, value in kwargs.items():
        parts.append(f"{name}={json.dumps(value, ensure_ascii=False)}")
    return ", ".join(parts)


def pretty_json(text: str | None) -> str:
    """Indent stored JSON for reading, or return the text unchanged when it
    does not parse."""
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def shorten(text: str | None, limit: int = 120) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def init_app(app: Flask) -> None:
    app.jinja_env.filters["time"] = format_time
    app.jinja_env.filters["duration"] = format_duration
    app.jinja_env.filters["call"] = format_call
    app.jinja_env.filters["pretty_json"] = pretty_json
    app.jinja_env.filters["shorten"] = shorten
    app.jinja_env.globals["span"] = span
