# SPDX-License-Identifier: GPL-2.0-or-later
"""
Incremental HTTP/1.x request head parser.

Theory of operation
-------------------

Bytes go in with ``feed()``, parsed heads come out of ``next_head()``.
The parser never reads a socket: the caller feeds whatever it received
and asks for a head, reading more while ``next_head()`` returns None.

The parser has three states:

HEAD
    Collecting a head. Lines are consumed one at a time as soon as their
    line feed arrives: empty lines before the request line are skipped
    (RFC 7230 3.5), then the request line, then header fields up to the
    empty line ending the head. When that line is consumed, the head is
    returned and the parser moves to BODY.

BODY
    A head was returned; the bytes after it are the request body or the
    next pipelined request, and only the caller knows which (it owns the
    Content-Length). ``take_buffered()`` hands those bytes over and moves
    back to HEAD with an empty buffer; the caller feeds back whatever it
    read past the body. Calling ``next_head()`` in BODY is a bug.

ERROR
    A ProtocolError was raised. The head cannot be trusted nor skipped,
    so the connection must be answered and closed: ``next_head()``
    raises the same error again and fed data is dropped.

Line endings: a line ends at LF, and one CR before it is removed. Bare
LF is tolerated like most servers and clients do (RFC 7230 3.5 allows
it); a CR anywhere else in a line is rejected, since CR alone is how
some parties split lines and others do not.

Limits, each answered before the data grows past it, because a client
may otherwise make the server buffer or scan without bound:

- ``max_line``: the request line (without line ending) -> 414. It is
  also the largest target we ever need to decode.
- ``max_header_line``: one header field line -> 431.
- ``max_headers``: number of header fields -> 431; each field costs a
  Python object, far more than its bytes.
- ``max_head_bytes``: the whole head, including the blank lines skipped
  before the request line (else an endless stream of empty lines would
  be accepted forever) -> 431.

A line that has no line feed yet is checked against its limit too: once
more bytes arrived than the longest legal line plus CRLF, the request is
rejected without waiting for the rest.

Complexity: the parser remembers how far it searched for the next LF, so
every byte is scanned once and every line is parsed once, whatever the
sizes of the fed chunks. Parsing n bytes costs O(n) even when fed one
byte at a time, and a pending head never holds more than
``max_head_bytes`` plus one fed chunk, provided the caller calls
``next_head()`` after every ``feed()``.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from .errors import ProtocolError
from .headers import Headers

# RFC 7230 3.2.6 token, used for methods and field names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Visible ASCII: the characters a request target may be made of.
_TARGET = re.compile(rb"[\x21-\x7e]+")

_VERSION = re.compile(rb"HTTP/[0-9]+(\.[0-9]+)?")
_SUPPORTED_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")

# Control characters not allowed in a field value (HTAB is allowed).
_VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# absolute-form target (RFC 7230 5.3.2): scheme "://" authority.
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*")

# A "%" not followed by two hex digits.
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclasses.dataclass(frozen=True)
class RequestHead:
    """
    A parsed request line and header fields.

    ``method`` is kept as sent (methods are case-sensitive), ``target``
    is the raw request target, ``path`` its percent-decoded path without
    the query, ``query`` the raw query string ("" if none).
    """

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: Headers


class RequestParser:
    """
    Parse request heads from fed bytes; see the module docstring.

    Example::

        >>> p = RequestParser()
        >>> p.feed(b"PUT /images/x HTTP/1.1\\r\\nContent-Length: 3\\r\\n")
        >>> p.next_head() is None
        True
        >>> p.feed(b"\\r\\nabc")
        >>> p.next_head().path
        '/images/x'
        >>> p.take_buffered()
        b'abc'
    """

    def __init__(self, max_line: int = 4096, max_headers: int = 100,
                 max_header_line: int = 8192,
                 max_head_bytes: int = 65536) -> None:
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_header_line = max_header_line
        self.max_head_bytes = max_head_bytes
        self._buf = bytearray()
        self._reset()
        self._error: ProtocolError | None = None

    def _reset(self) -> None:
        # The buffer always starts at the current head, so offsets into it
        # are also byte counts of the head so far.
        self._line = 0      # start of the first unconsumed line
        self._scan = 0      # where to resume searching for LF
        self._request: tuple[str, str, str, str, str] | None = None
        self._fields: list[tuple[str, str]] = []
        self._done = False  # BODY state

    @property
    def buffered_size(self) -> int:
        """
        Bytes held by the parser: the partial head in HEAD state, the
        bytes after the head in BODY state.
        """
        if self._done:
            return len(self._buf) - self._line
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes; call ``next_head()`` afterwards."""
        if self._error is None:
            self._buf += data

    def next_head(self) -> RequestHead | None:
        """
        Return the next complete head, or None if more data is needed.

        Raises ProtocolError for an invalid or oversized head, and
        RuntimeError if the previous head's bytes were not taken yet.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            raise RuntimeError("take_buffered() must follow a head")
        try:
            return self._parse()
        except ProtocolError as e:
            self._error = e
            self._buf = bytearray()
            raise

    def take_buffered(self) -> bytes:
        """
        Return the bytes received after the last head and empty the
        buffer, so the parser is ready for the next head.
        """
        if not self._done:
            raise RuntimeError("No head was returned")
        data = bytes(self._buf[self._line:])
        self._buf = bytearray()
        self._reset()
        return data

    def _parse(self) -> RequestHead | None:
        buf = self._buf
        while True:
            end = buf.find(b"\n", self._scan)
            if end == -1:
                self._scan = len(buf)
                self._check_partial_line(len(buf) - self._line)
                return None

            line = bytes(buf[self._line:end])
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line = self._scan = end + 1

            # Limits before syntax, in the same order as for a partial
            # line, so that how the bytes were split never changes the
            # error.
            if self._request is None:
                if len(line) > self.max_line:
                    raise ProtocolError(414, "Request-URI Too Long")
            elif len(line) > self.max_header_line:
                raise _too_large("Header line too long")
            if self._line > self.max_head_bytes:
                raise _too_large("Request head too large")

            if self._request is None:
                if line:
                    self._request = _parse_request_line(line)
            elif line:
                if len(self._fields) == self.max_headers:
                    raise _too_large("Too many headers")
                self._fields.append(_parse_field(line))

            if self._request is not None and not line:
                self._done = True
                method, target, path, query, version = self._request
                return RequestHead(method, target, path, query, version,
                                   Headers(self._fields))

    def _check_partial_line(self, size: int) -> None:
        # A legal line has at most its limit plus CR before the LF.
        if self._request is None:
            if size > self.max_line + 1:
                raise ProtocolError(414, "Request-URI Too Long")
        elif size > self.max_header_line + 1:
            raise _too_large("Header line too long")
        if self._line + size > self.max_head_bytes:
            raise _too_large("Request head too large")


def _too_large(reason: str) -> ProtocolError:
    return ProtocolError(
        431, f"Request Header Fields Too Large: {reason}")


def _show(data: bytes) -> str:
    """Short printable form of client bytes for error messages."""
    text = data[:60].decode("latin-1")
    return repr(text + "..." if len(data) > 60 else text)


def _parse_request_line(line: bytes) -> tuple[str, str, str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ProtocolError(400, f"Invalid request line: {_show(line)}")
    method, target, version = parts

    if not _TOKEN.fullmatch(method):
        raise ProtocolError(400, f"Invalid method: {_show(method)}")
    if not _TARGET.fullmatch(target):
        raise ProtocolError(400, f"Invalid request target: {_show(target)}")
    if version not in _SUPPORTED_VERSIONS:
        if _VERSION.fullmatch(version):
            raise ProtocolError(
                505, f"HTTP Version Not Supported: {_show(version)}")
        raise ProtocolError(400, f"Invalid HTTP version: {_show(version)}")

    raw = target.decode("ascii")
    path, query = _split_target(raw)
    return method.decode("ascii"), raw, path, query, version.decode("ascii")


def _split_target(target: str) -> tuple[str, str]:
    """Return the decoded path and raw query of a request target."""
    if target == "*":
        # asterisk-form (OPTIONS *): no path to decode.
        return "*", ""
    rest = target
    if not target.startswith("/"):
        # absolute-form must be accepted by servers (RFC 7230 5.3.2);
        # only its path and query matter here.
        m = _ABSOLUTE.match(target)
        if m is None:
            raise ProtocolError(400, f"Invalid request target: {target!r}")
        rest = target[m.end():]
        if not rest.startswith("/"):
            rest = "/" + rest
    raw_path, _, query = rest.partition("?")
    return _decode_path(raw_path), query


def _decode_path(raw: str) -> str:
    # urllib's unquote silently keeps bad escapes and replaces invalid
    # UTF-8; a path that does not decode exactly is rejected instead, so
    # it cannot match a route or name a ticket by accident.
    if _BAD_PERCENT.search(raw):
        raise ProtocolError(400, f"Invalid percent-encoding in path: {raw!r}")
    try:
        return urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(400, f"Invalid UTF-8 in path: {raw!r}") from None


def _parse_field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        # obs-fold (RFC 7230 3.2.4), or whitespace before the first field
        # (3): both are ways to hide a field from some parsers.
        raise ProtocolError(
            400, f"Obsolete line folding is not supported: {_show(line)}")
    name, colon, value = line.partition(b":")
    if not colon:
        raise ProtocolError(400, f"Invalid header line: {_show(line)}")
    if name[-1:] in (b" ", b"\t"):
        # RFC 7230 3.2.4: must be rejected, proxies disagree on the name.
        raise ProtocolError(
            400, f"Whitespace before colon in header: {_show(name)}")
    if not _TOKEN.fullmatch(name):
        raise ProtocolError(400, f"Invalid header name: {_show(name)}")
    value = value.strip(b" \t")
    if _VALUE_CTL.search(value):
        raise ProtocolError(
            400, f"Invalid character in header value: {_show(name)}")
    # latin-1 maps every byte to one character, so values keep their
    # exact bytes (obs-text) and can be re-encoded losslessly.
    return name.decode("ascii"), value.decode("latin-1")
