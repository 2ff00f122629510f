# SPDX-License-Identifier: GPL-2.0-or-later
"""
Request header fields and the policies derived from them.

``Headers`` is a case-insensitive multi-dict that keeps the fields in the
order and spelling they were received. The helper functions turn fields
into decisions: how long the body is (``content_length``), whether the
client waits for an interim 100 (``expects_continue``) and whether the
connection stays open after the response (``keep_alive``).
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from .errors import ProtocolError

# Fields that must appear at most once. A repeated field with the same
# value is harmless (RFC 7230 3.3.2 allows it for Content-Length); two
# different values mean two parties may read the request differently
# (request smuggling), so the request is rejected.
SINGLETONS = frozenset({
    "content-length",
    "content-range",
    "range",
    "host",
    "transfer-encoding",
    "expect",
})

_DIGITS = re.compile(r"[0-9]+")


class Headers:
    """
    Immutable case-insensitive multi-dict of header fields.

    Built from (name, value) pairs as received; lookups ignore the case
    of the name::

        >>> h = Headers([("Content-Length", "5"), ("Accept", "a"),
        ...              ("accept", "b")])
        >>> h.get("content-length")
        '5'
        >>> h.get_all("ACCEPT")
        ['a', 'b']
    """

    __slots__ = ("_items", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = tuple((name, value) for name, value in items)
        index: dict[str, list[str]] = {}
        for name, value in self._items:
            index.setdefault(name.lower(), []).append(value)
        self._index = index

    def get(self, name: str, default: str | None = None) -> str | None:
        """
        Return the value of field ``name``, or ``default`` if absent.

        A repeated singleton field (see ``SINGLETONS``) with different
        values raises ProtocolError 400. Other repeated fields are
        combined into one comma-separated value, which is what RFC 7230
        3.2.2 defines them to mean.
        """
        values = self._index.get(name.lower())
        if values is None:
            return default
        if len(values) == 1:
            return values[0]
        if name.lower() in SINGLETONS:
            if any(v != values[0] for v in values):
                raise ProtocolError(400, f"Duplicate header: {name}")
            return values[0]
        return ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        """Return all values of field ``name`` in received order."""
        return list(self._index.get(name.lower(), ()))

    def items(self) -> list[tuple[str, str]]:
        """Return all (name, value) pairs as received."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def check_transfer_encoding(headers: Headers,
                            version: str = "HTTP/1.1") -> bool:
    """
    Apply the Transfer-Encoding policy; return True for a chunked body.

    Request bodies are framed by Content-Length or by the chunked coding
    alone (RFC 9112 6.1):

    - Transfer-Encoding together with Content-Length is the classic
      smuggling vector (RFC 9112 6.3): 400.
    - Transfer-Encoding in an HTTP/1.0 request cannot be trusted (RFC
      9112 6.1): 400.
    - Any coding but chunked alone (gzip, identity, "gzip, chunked"):
      501, a coding we do not implement.

        >>> check_transfer_encoding(Headers([("Transfer-Encoding",
        ...                                   "Chunked")]))
        True
    """
    if "transfer-encoding" not in headers:
        return False
    value = ", ".join(headers.get_all("transfer-encoding"))
    if "content-length" in headers:
        raise ProtocolError(
            400, "Request has both Transfer-Encoding and Content-Length")
    if version == "HTTP/1.0":
        raise ProtocolError(
            400, "Transfer-Encoding is not allowed in HTTP/1.0 requests")
    if value.strip(" \t").lower() != "chunked":
        raise ProtocolError(
            501, f"Transfer-Encoding {value!r} is not supported")
    return True


def content_length(headers: Headers) -> int | None:
    """
    Return the request body length, or None if there is no Content-Length.

    This is part of the request framing decision, so it also applies the
    Transfer-Encoding policy (``check_transfer_encoding``, which tells a
    chunked body); call it for every request, not only for requests
    expected to have a body.

        >>> content_length(Headers([("Content-Length", "42")]))
        42
    """
    check_transfer_encoding(headers)
    value = headers.get("content-length")
    if value is None:
        return None
    # Only ASCII digits: int() would also take "+5", " 5", "5_0" and
    # non-ASCII digits, which other parties along the way may read
    # differently.
    if not _DIGITS.fullmatch(value):
        raise ProtocolError(400, f"Invalid Content-Length: {value!r}")
    try:
        return int(value)
    except ValueError:
        # More digits than int() accepts (sys.int_info.str_digits_check).
        raise ProtocolError(
            400, f"Invalid Content-Length: {value[:20]!r}...") from None


def expects_continue(headers: Headers) -> bool:
    """
    Return True if the client waits for "100 Continue" before the body.

    Any expectation other than 100-continue cannot be met: 417.
    """
    value = headers.get("expect")
    if value is None:
        return False
    if value.lower() == "100-continue":
        return True
    raise ProtocolError(417, f"Unsupported expectation: {value!r}")


def connection_tokens(headers: Headers) -> set[str]:
    """Return the lower-cased tokens of all Connection fields."""
    tokens = set()
    for value in headers.get_all("connection"):
        for token in value.split(","):
            token = token.strip(" \t").lower()
            if token:
                tokens.add(token)
    return tokens


def keep_alive(version: str, headers: Headers) -> bool:
    """
    Return True if the connection may stay open after the response.

    HTTP/1.1 connections persist unless the client sends the "close"
    token; HTTP/1.0 connections close unless the client sends the
    "keep-alive" token (RFC 7230 6.3). "close" always wins.
    """
    tokens = connection_tokens(headers)
    if "close" in tokens:
        return False
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return True
