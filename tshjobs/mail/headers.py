"""Validation and RFC 2047 encoding of the header text of outgoing messages.

Python's email package (checked on 3.11.7) folds long non-ASCII headers into
encoded words badly in two ways. It puts the space between two words outside
the encoded words, where RFC 2047 section 6.2 requires decoders to drop it, so
a folded Arabic subject loses spaces. It also splits encoded words in the
middle of a word, which Python's own parser, and by reports some mail readers,
show with an extra space. This module builds the encoded words itself: each
one contains whole words where they fit and carries the space before its first
word, so a decoder that follows RFC 2047 restores the text exactly.
`build_message` stores the values with `EmailMessage.set_raw`, and its policy
(`refold_source="none"`) keeps the generator from folding them again.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterator, Sequence
from email.headerregistry import Address

from tshjobs.errors import PermanentError

# RFC 5322 section 2.1.1 recommends header lines of at most 78 characters, and
# RFC 2047 section 2 limits an encoded word to 75 characters.
MAX_LINE_LENGTH = 78
MAX_ENCODED_WORD_LENGTH = 75

_ENCODED_WORD_PREFIX = "=?utf-8?b?"
_ENCODED_WORD_SUFFIX = "?="
_ENCODED_WORD_OVERHEAD = len(_ENCODED_WORD_PREFIX) + len(_ENCODED_WORD_SUFFIX)

# A phrase (RFC 5322 section 3.2.5) may be sent bare when it has only atext
# characters and single spaces between words; otherwise it needs quoting.
_BARE_PHRASE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)


class InvalidMessageError(PermanentError, ValueError):
    """Raised when a message cannot be built from the given values: a header
    value with a line break or control character, an invalid address, an
    attachment without a file name or MIME type. Retrying cannot help."""


def check_header_text(text: str, field_name: str) -> str:
    """Return text unchanged, or raise InvalidMessageError when it contains a
    line break or another control character (a tab is allowed).

    A CR or LF in a header value would start a new header line, which is how
    header injection adds a Bcc or replaces the body."""
    if not isinstance(text, str):
        raise InvalidMessageError(
            f"{field_name} must be text, got {type(text).__name__}"
        )

    for position, char in enumerate(text):
        if char == "\t":
            continue

        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):
            raise InvalidMessageError(
                f"{field_name} {text!r} contains the control character {char!r} at "
                f"position {position}; header values must be one line"
            )
    return text


def needs_encoding(text: str) -> bool:
    """Tell whether text must be sent as encoded words: it is not ASCII, or it
    contains `=?`, which a reader would take for the start of an encoded word."""
    return not text.isascii() or "=?" in text


def encode_unstructured(header_name: str, text: str) -> str:
    """Encode text for an unstructured header such as Subject, folded into
    lines of at most 78 characters (the first one counts `Name: `).

    Lines are joined with `\\n ` as `EmailMessage.set_raw` expects."""
    first_line_room = MAX_LINE_LENGTH - len(header_name) - 2
    return "\n ".join(_encoded_words(text, first_line_room))


def format_address_list(header_name: str, addresses: Sequence[Address]) -> str:
    """Format addresses for From, To, Cc or Reply-To, with each address after
    the first on a line of its own."""
    lines: list[str] = []
    for index, address in enumerate(addresses):
        if index == 0:
            indent = len(header_name) + 2
        else:
            indent = 1

        tokens = _address_tokens(address, MAX_LINE_LENGTH - indent)
        if index < len(addresses) - 1:
            tokens[-1] += ","
        lines.extend(_pack_tokens(tokens, indent))
    return "\n ".join(lines)


def _address_tokens(address: Address, first_line_room: int) -> list[str]:
    """Split one address into the tokens that may go on separate lines: the
    display name (as one token or as encoded words) and then `<addr-spec>`."""
    name = address.display_name
    if not name:
        return [address.addr_spec]

    angle_addr = f"<{address.addr_spec}>"
    if not needs_encoding(name):
        if _BARE_PHRASE.fullmatch(name):
            phrase = name
        else:
            escaped = name.replace("\\", "\\\\").replace('"', '\\"')
            phrase = f'"{escaped}"'

        # A phrase too long for one line is encoded, so that no line has to be
        # folded inside a quoted string.
        if len(phrase) <= first_line_room:
            return [phrase, angle_addr]

    return [*_encoded_words(name, first_line_room), angle_addr]


def _pack_tokens(tokens: list[str], indent: int) -> list[str]:
    """Join tokens with spaces into lines of at most 78 characters; the first
    line starts after `indent` characters, later ones after one space."""
    lines = [tokens[0]]
    used = indent + len(tokens[0])
    for token in tokens[1:]:
        if used + 1 + len(token) <= MAX_LINE_LENGTH:
            lines[-1] += " " + token
            used += 1 + len(token)
        else:
            lines.append(token)
            used = 1 + len(token)
    return lines


def _encoded_word_length(text: str) -> int:
    byte_count = len(text.encode("utf-8"))
    return _ENCODED_WORD_OVERHEAD + 4 * ((byte_count + 2) // 3)


def _encoded_word(text: str) -> str:
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return _ENCODED_WORD_PREFIX + encoded + _ENCODED_WORD_SUFFIX


def _encoded_words(text: str, first_line_room: int) -> Iterator[str]:
    """Yield base64 encoded words that together decode to text.

    The first word is at most `first_line_room` characters long and the others
    at most 75. Each word ends before a whitespace run and the next word starts
    with it, so decoders that drop the folding whitespace between encoded words
    keep every space. Only a word too long for one encoded word is split
    between two code points."""
    room = min(first_line_room, MAX_ENCODED_WORD_LENGTH)
    chunk = ""
    for token in re.findall(r"\s*\S+|\s+", text):
        if _encoded_word_length(chunk + token) <= room:
            chunk += token
            continue

        if chunk:
            yield _encoded_word(chunk)
            room = MAX_ENCODED_WORD_LENGTH

        while _encoded_word_length(token) > room:
            cut = len(token) - 1
            while cut > 1 and _encoded_word_length(token[:cut]) > room:
                cut -= 1
            yield _encoded_word(token[:cut])
            room = MAX_ENCODED_WORD_LENGTH
            token = token[cut:]
        chunk = token

    if chunk:
        yield _encoded_word(chunk)
