# SPDX-License-Identifier: GPL-2.0-or-later
"""
Whether a connection serves another request after this one: the
keep-alive and close rules, as a pure function of what happened.

Theory of operation
-------------------
After every request the connection describes the exchange (an
:class:`Exchange`: the request's HTTP version and headers, what its
handler asked, how it failed, whether its body was read and its response
begun, whether the daemon is draining) and :func:`decide` returns a
:class:`Decision`. The rules, first match wins:

1. An error after the response head was sent: close at once. No status
   can be sent any more; the truncated body is the client's only signal.
   No lingering: the client is reading, not sending.
2. A malformed request head (``BAD_HEAD``: unparsable, or framing
   headers such as Content-Length that cannot be trusted): close; the
   parser cannot find where the next request starts.
3. An unexpected error (``BUG``): close; the connection's state is
   unknown.
4. A refusal that ends the transfer (``DENIED``: a 403 from a ticket
   check): close, so a canceled transfer cannot go on over a kept-alive
   connection.
5. The request body was not read to its end: close; the unread bytes
   cannot be told apart from the next request.
6. The client asked to close: ``Connection: close``, or HTTP/1.0
   without ``keep-alive`` (``http.headers.keep_alive``).
7. The handler asked to close (``close=y`` in the query).
8. The daemon is draining (graceful stop): close after this response.
9. Otherwise keep the connection for the next request, also after an
   error answered with a status (``ERROR``: 4xx or 5xx).

Whenever the connection closes and the response has not begun, the
response announces it with ``Connection: close``. Whenever it closes
with part of the body unread (rules 2 to 8), it lingers: it reads and
drops what the client still sends before closing, or the kernel answers
that input with a reset that can destroy the response the client has
not read yet.

Nothing here reads a socket or a clock: the table in
``test/unit/httpd/test_keepalive.py`` is the specification.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..http import headers as http_headers


class Failure(enum.Enum):
    """How a request failed, as far as the connection rules care."""

    # The handler returned normally.
    NONE = "none"
    # An error answered with its status (4xx, 5xx).
    ERROR = "error"
    # A 403 that must end the connection (see rule 4).
    DENIED = "denied"
    # The request head was malformed (see rule 2).
    BAD_HEAD = "bad-head"
    # An unexpected exception: a bug (see rule 3).
    BUG = "bug"


@dataclass(frozen=True)
class Exchange:
    """What happened to one request, as input to :func:`decide`."""

    version: str
    headers: http_headers.Headers
    # The handler asked to close (close=y).
    close_requested: bool = False
    failure: Failure = Failure.NONE
    # Request body bytes the handler did not read.
    body_unread: bool = False
    # The response head was sent already.
    response_started: bool = False
    # The daemon asked the connection to end.
    draining: bool = False


@dataclass(frozen=True)
class Decision:
    """What the connection does after the response."""

    # Serve the next request on this connection.
    keep_alive: bool
    # Announce "Connection: close" on the response (it has not begun).
    close_header: bool = False
    # Read and drop the client's pending input before closing.
    linger: bool = False


KEEP = Decision(keep_alive=True)

# Failures that end the connection whatever else happened.
_CLOSING = frozenset({Failure.BAD_HEAD, Failure.BUG, Failure.DENIED})


def decide(x: Exchange) -> Decision:
    """
    Apply the connection rules (see the module docstring) to an exchange.

    >>> h = http_headers.Headers([])
    >>> decide(Exchange("HTTP/1.1", h))
    Decision(keep_alive=True, close_header=False, linger=False)
    >>> decide(Exchange("HTTP/1.0", h))
    Decision(keep_alive=False, close_header=True, linger=False)
    """
    if x.response_started and x.failure is not Failure.NONE:
        return Decision(keep_alive=False)
    if (x.failure in _CLOSING or x.body_unread or x.close_requested
            or x.draining
            or not http_headers.keep_alive(x.version, x.headers)):
        return Decision(keep_alive=False,
                        close_header=not x.response_started,
                        linger=x.body_unread)
    return KEEP
