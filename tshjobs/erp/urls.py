"""ERP database URLs: dialect, SQLite path, and a form safe to log."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

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


# Characters allowed unencoded in the user part of a URL (RFC 3986).
_USERINFO = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")


def _raw_userinfo(url: str) -> str | None:
    """Return the text between "://" and the last "@" before the path, read
    without urlsplit, which stops early at a "/", "#" or "?" in a password."""
    _, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return None
    return rest[: rest.rindex("@")]


def url_problem(url: str) -> str | None:
    """Return what makes a database or Redis URL unusable, without showing
    its password, or None."""
    userinfo = _raw_userinfo(url)
    if userinfo is not None and not _USERINFO.fullmatch(userinfo):
        return (
            "its user name or password contains characters that must be "
            "percent-encoded in a URL (such as %, #, /, ?, @ or a space); "
            "write them as %25, %23, %2F, %3F, %40 and %20"
        )
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "its port is not a number from 0 to 65535"
    return None


def scrub_password(text: str, url: str) -> str:
    """Return `text`, such as a driver's error message, with the URL's
    password masked wherever it appears, raw or decoded."""
    userinfo = _raw_userinfo(url)
    if not userinfo or ":" not in userinfo:
        return text
    password = userinfo.partition(":")[2]
    for form in {password, unquote(password)}:
        if form:
            text = text.replace(form, "***")
    return text


def redact_url(url: str) -> str:
    """Return the URL with its password, in the user part or the query, masked."""
    userinfo = _raw_userinfo(url)
    if userinfo is not None and not _USERINFO.fullmatch(userinfo):
        user = userinfo.partition(":")[0]
        rest = url.partition("://")[2]
        url = f"{url.partition('://')[0]}://{user}:***@{rest[rest.rindex('@') + 1 :]}"
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
