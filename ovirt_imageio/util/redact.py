# SPDX-License-Identifier: GPL-2.0-or-later
"""
Ticket ids made fit for logs.

A ticket id is a bearer secret: whoever knows it may read or write the
image. Logs, reprs and error messages (which get logged too) therefore
never show an id whole, only a prefix followed by ``...``: the first 8
characters, or at most half of an id shorter than 16, so even a short
id that is not a uuid keeps most of it secret. Ids appear alone, in
request paths (``/images/<id>``, ``/tickets/<id>``) and in URLs and texts
quoting such paths (a proxy ticket's URL, a parser error quoting the
request line); each has a function here, and this is the only place
that knows the rule.

    >>> short_id("8b3b9c2e-93bf-4d3e-a4c0-6b2f1d0e9a71")
    '8b3b9c2e...'
    >>> path("/images/8b3b9c2e-93bf-4d3e/extents")
    '/images/8b3b9c2e.../extents'
    >>> text("https://host:54322/images/8b3b9c2e-93bf-4d3e")
    'https://host:54322/images/8b3b9c2e...'
"""

from __future__ import annotations

import re

# Characters of an id shown at most, and the part of a short id.
PREFIX = 8

# The id at the start of a request path, up to the next "/".
_PATH = re.compile(r"^(/images/|/tickets/)([^/]+)")

# The same anywhere in a text; there the id also ends at a quote, a
# space or a query string.
_TEXT = re.compile(r"(/images/|/tickets/)([^/\s'\"?]+)")


def short_id(ticket_id: str) -> str:
    """
    A loggable prefix of a ticket id.

        >>> short_id("secret")
        'sec...'
    """
    return ticket_id[:min(PREFIX, len(ticket_id) // 2)] + "..."


def path(request_path: str) -> str:
    """
    A request path with the ticket id it starts with shortened.

        >>> path("/tickets/")
        '/tickets/'
    """
    return _PATH.sub(_shorten, request_path, count=1)


def text(s: str) -> str:
    """
    A text (URL, error message) with every ticket id in a ticket path
    shortened.

        >>> text("Invalid request target '/images/secret-id?x=1'")
        "Invalid request target '/images/secr...?x=1'"
    """
    return _TEXT.sub(_shorten, s)


def _shorten(m: re.Match[str]) -> str:
    return m.group(1) + short_id(m.group(2))
