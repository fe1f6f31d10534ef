"""ERP database URLs: dialect, SQLite path, and a form safe to log."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from tshjobs.errors import ConfigError


def dialect_of(url: str) -> str:
    """Return 'postgresql' or 'sqlite' for a database URL, or raise ConfigError."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    if url.startswith("sqlite:///"):
        return "sqlite"
    raise ConfigError(
        f"invalid ERP database URL {redact_url(url)!r}: must start with "
        "postgresql:// or sqlite:///"
    )


def redact_url(url: str) -> str:
    """Return the URL with its password, in the user part or the query, masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparseable URL)"

    query = urlencode(
        [
            (key, "***" if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    if password is None and query == parts.query:
        return url

    # Rebuilt by hand because urlunsplit would drop the empty host of
    # sqlite:////path URLs.
    netloc = parts.netloc
    if password is not None:
        user_part, _, host_part = netloc.rpartition("@")
        netloc = f"{user_part.partition(':')[0]}:***@{host_part}"
    rest = url[len(parts.scheme) + len("://") + len(parts.netloc) :]
    if query != parts.query:
        rest = rest.replace("?" + parts.query, "?" + query, 1)
    return f"{parts.scheme}://{netloc}{rest}"


def sqlite_path(url: str) -> str:
    """Return the file path of a sqlite:/// URL.

    `sqlite:///erp.db` is relative to the working directory and
    `sqlite:////var/lib/erp.db` is absolute, as in SQLAlchemy.
    """
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            f"invalid ERP database URL {url!r}: give the path of a SQLite file; "
            "in-memory databases are not supported because each thread opens "
            "its own connection"
        )
    if "?" in path:
        raise ConfigError(
            f"invalid ERP database URL {url!r}: SQLite URLs take no query options"
        )
    return path
