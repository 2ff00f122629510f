# SPDX-License-Identifier: GPL-2.0-or-later
"""
Response head formatting, and the framing of bodies sent with
``Transfer-Encoding: chunked``.

A head is built as one bytes object so the server sends it with a single
system call (and may append a small body to it). A chunked body is a
series of ``chunk(data)`` ended by ``LAST_CHUNK``: a client that reads
it to its end knows it got the whole body, one that sees the connection
close before ``LAST_CHUNK`` knows it did not (RFC 9112 section 7.1), so
a server failing after the head can still say so.
"""

from __future__ import annotations

import email.utils
import http
import re

# Reason phrases of every status the daemon sends (RFC 9110 wording).
REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}

# Interim response sent before reading a body announced with
# "Expect: 100-continue".
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# The end of a chunked body: the last chunk, no trailer fields.
LAST_CHUNK = b"0\r\n\r\n"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Control characters other than HTAB. CR and LF would let a value that
# came from a client (a file name, an echoed header) end the field and
# inject its own headers or body.
_VALUE_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def reason(status: int) -> str:
    """Return the reason phrase for ``status`` ("" if unknown)."""
    if status in REASONS:
        return REASONS[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def format_head(status: int, headers: list[tuple[str, str]],
                version: str = "HTTP/1.1") -> bytes:
    """
    Return a complete response head, ready for a single send.

        >>> format_head(200, [("Content-Length", "0")])
        b'HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n'

    Values are encoded as latin-1 when possible, else as UTF-8 (used for
    Content-Disposition file names, which upstream sends as raw UTF-8).
    An invalid status, version, header name, or a control character in a
    value raises ValueError: these come from the server, not the client.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"Invalid status: {status}")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise ValueError(f"Invalid version: {version!r}")
    lines = [f"{version} {status} {reason(status)}\r\n".encode("ascii")]
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"Invalid header name: {name!r}")
        if _VALUE_CTL.search(value):
            raise ValueError(f"Invalid header value for {name}: {value!r}")
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError:
            data = value.encode("utf-8")
        lines.append(name.encode("ascii") + b": " + data + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def http_date(timestamp: float) -> str:
    """
    Format a Unix timestamp as an IMF-fixdate (RFC 7231 7.1.1.1).

        >>> http_date(784111777)
        'Sun, 06 Nov 1994 08:49:37 GMT'
    """
    return email.utils.formatdate(timestamp, usegmt=True)


def chunk(data: bytes) -> bytes:
    """
    Frame data as one chunk of a chunked body, ready for a single send.
    An empty chunk would end the body: data must not be empty.

        >>> chunk(b"hello")
        b'5\\r\\nhello\\r\\n'
    """
    if not data:
        raise ValueError("An empty chunk ends the body")
    return b"%x\r\n%b\r\n" % (len(data), data)
