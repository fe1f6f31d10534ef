"""Named SQL queries: parsing, loading, overriding and placeholder conversion.

A query file is a sequence of blocks. Each block starts with a header line
`-- name: get_order` and holds one SQL statement that uses `:name`
placeholders for its parameters. A header may name a dialect,
`-- name: claim_sync_rows [postgresql]`, for a variant that only that database
runs. A lookup takes the variant of the connection's dialect first, then the
plain block.

The built-in queries are in queries.sql next to this module. An override file
(TSHJOBS_ERP_QUERIES_FILE) has the same format. Each of its blocks replaces
the built-in block of the same name: a plain block replaces the plain block
and every dialect variant, a block with a dialect replaces only that variant.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tshjobs.errors import ConfigError

log = logging.getLogger(__name__)

BUILTIN_QUERIES_FILE = Path(__file__).with_name("queries.sql")
DIALECTS = ("postgresql", "sqlite")

_HEADER_START = re.compile(r"--\s*name:")
_HEADER = re.compile(r"--\s*name:\s*(?P<name>\S+)(?:\s+\[(?P<dialect>[^\]]*)\])?\s*")
_QUERY_NAME = re.compile(r"[a-z_][a-z0-9_]*")

# Tokens that can contain a colon or a percent sign without it being a
# placeholder: string literals, quoted identifiers, dollar-quoted strings and
# comments. Then the PostgreSQL cast `::`, a `:name` placeholder, and `%`.
_SQL_TOKEN = re.compile(
    r"""
    (?P<quoted>
        '(?:[^']|'')*'
      | "(?:[^"]|"")*"
      | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?\$(?P=tag)\$
      | --[^\n]*
      | /\*.*?\*/
    )
    | (?P<cast>::)
    | :(?P<param>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<percent>%)
    """,
    re.DOTALL | re.VERBOSE,
)


@dataclass(frozen=True)
class NamedQuery:
    """One block of a query file."""

    name: str
    dialect: str | None
    sql: str
    source: str
    line: int

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


def sql_parameters(sql: str) -> set[str]:
    """Return the names of the `:name` placeholders in a statement."""
    return {
        match.group("param")
        for match in _SQL_TOKEN.finditer(sql)
        if match.group("param")
    }


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """Rewrite `:name` placeholders as psycopg's `%(name)s`.

    Every literal `%` becomes `%%`, inside string literals too, because
    psycopg reads the whole statement for placeholders. `::` casts, and colons
    inside literals and comments, stay as they are.
    NOTE: PostgreSQL E'...' strings with backslash-escaped quotes are not
    recognised; write such a quote as '' instead.
    """
    parts = []
    position = 0
    for match in _SQL_TOKEN.finditer(sql):
        parts.append(sql[position : match.start()])
        position = match.end()
        if match.group("param"):
            parts.append(f"%({match.group('param')})s")
        else:
            parts.append(match.group(0).replace("%", "%%"))
    parts.append(sql[position:])
    return "".join(parts)


def parse_named_queries(text: str, source: str) -> list[NamedQuery]:
    """Split a query file into its blocks, or raise ConfigError naming the
    file and line of the first malformed one."""
    queries: list[NamedQuery] = []
    seen: dict[tuple[str, str | None], int] = {}
    header: tuple[str, str | None, int] | None = None
    body: list[str] = []

    def finish_block() -> None:
        if header is None:
            return

        name, dialect, line = header
        # Comment lines after the statement describe the next block, not this one.
        lines = list(body)
        while lines and (not lines[-1].strip() or lines[-1].strip().startswith("--")):
            lines.pop()
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if not sql:
            raise ConfigError(f"{source}:{line}: query {name} has no SQL")
        queries.append(NamedQuery(name, dialect, sql, source, line))

    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        match = _HEADER.fullmatch(stripped)
        if match is None and _HEADER_START.match(stripped):
            raise ConfigError(
                f"{source}:{number}: malformed header {stripped!r}; expected "
                "'-- name: query_name' or '-- name: query_name [postgresql]'"
            )

        if match is None:
            if header is None and stripped and not stripped.startswith("--"):
                raise ConfigError(
                    f"{source}:{number}: SQL before the first '-- name:' line; "
                    "every query needs a '-- name: query_name' header"
                )
            body.append(line)
            continue

        finish_block()
        name, dialect = match.group("name"), match.group("dialect")
        if not _QUERY_NAME.fullmatch(name):
            raise ConfigError(
                f"{source}:{number}: invalid query name {name!r}: use lowercase "
                "letters, digits and underscores"
            )
        if dialect is not None and dialect not in DIALECTS:
            raise ConfigError(
                f"{source}:{number}: unknown dialect {dialect!r} for query {name}; "
                "allowed: " + ", ".join(DIALECTS)
            )
        if (name, dialect) in seen:
            raise ConfigError(
                f"{source}:{number}: query {name} is defined twice "
                f"(first at line {seen[(name, dialect)]})"
            )
        seen[(name, dialect)] = number
        header = (name, dialect, number)
        body = []

    finish_block()
    return queries


class QueryCatalog:
    """The named queries a connection runs, looked up by name and dialect."""

    def __init__(self, queries: Iterable[NamedQuery]):
        self._queries = {(query.name, query.dialect): query for query in queries}

    def names(self) -> set[str]:
        return {name for name, _ in self._queries}

    def get(self, name: str, dialect: str) -> NamedQuery:
        """Return the variant of `name` for `dialect`, else its plain block."""
        query = self._queries.get((name, dialect)) or self._queries.get((name, None))
        if query is None:
            raise KeyError(f"no ERP query named {name!r} for {dialect}")
        return query

    def sql(self, name: str, dialect: str) -> str:
        return self.get(name, dialect).sql

    def with_overrides(self, overrides: list[NamedQuery]) -> QueryCatalog:
        """Return a catalogue where each override replaces the built-in block
        of its name, or raise ConfigError on an unknown name or parameter."""
        merged = dict(self._queries)
        for override in overrides:
            variants = [
                query for key, query in merged.items() if key[0] == override.name
            ]
            if not variants:
                raise ConfigError(
                    f"{override.location}: unknown query name {override.name!r}; "
                    "an override file may only replace built-in queries: "
                    + ", ".join(sorted(self.names()))
                )

            allowed = set().union(*(sql_parameters(query.sql) for query in variants))
            unknown = sql_parameters(override.sql) - allowed
            if unknown:
                raise ConfigError(
                    f"{override.location}: query {override.name} uses parameter(s) "
                    + ", ".join(f":{name}" for name in sorted(unknown))
                    + " that tshjobs does not pass; available: "
                    + (", ".join(f":{name}" for name in sorted(allowed)) or "none")
                )

            if override.dialect is None:
                for query in variants:
                    del merged[(query.name, query.dialect)]
            merged[(override.name, override.dialect)] = override
        return QueryCatalog(merged.values())


@functools.lru_cache(maxsize=1)
def builtin_queries() -> QueryCatalog:
    text = BUILTIN_QUERIES_FILE.read_text(encoding="utf-8")
    return QueryCatalog(parse_named_queries(text, str(BUILTIN_QUERIES_FILE)))


def load_queries(override_file: str | Path | None = None) -> QueryCatalog:
    """Return the built-in queries, with the blocks of `override_file`
    replacing those of the same name when a file is given.

    Raises ConfigError when the file is missing or unreadable, malformed, or
    names a query or a parameter that tshjobs does not have.
    """
    catalog = builtin_queries()
    if not override_file:
        return catalog

    path = Path(override_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"ERP queries file not found: {path}; fix or unset TSHJOBS_ERP_QUERIES_FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read ERP queries file {path}: {exc}") from None

    overrides = parse_named_queries(text, str(path))
    merged = catalog.with_overrides(overrides)
    log.info(
        "ERP queries file %s replaces %d built-in queries: %s",
        path,
        len(overrides),
        ", ".join(sorted({query.name for query in overrides})),
    )
    return merged
