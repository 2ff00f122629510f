# SPDX-License-Identifier: GPL-2.0-or-later
"""
Query string parsing and typed access to query parameters.

Parameters follow the upstream daemon: the last duplicate wins, blank
values are kept, and flags are exactly "y" or "n".
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Mapping

from .errors import ProtocolError

_DIGITS = re.compile(r"[0-9]+")


def parse_query(qs: str) -> dict[str, str]:
    """
    Parse a raw query string into a dict.

        >>> parse_query("flush=n&close=y&flush=y&a")
        {'flush': 'y', 'close': 'y', 'a': ''}

    Names and values are percent-decoded ("+" is a space, as in HTML
    forms); invalid escapes are kept and invalid UTF-8 is replaced, since
    a bad value fails later, where its parameter is named.
    """
    return dict(urllib.parse.parse_qsl(qs, keep_blank_values=True))


def parse_flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    """
    Return query flag ``name``: "y" is True, "n" is False, missing is
    ``default``; anything else raises ProtocolError 400.

        >>> parse_flag({"flush": "n"}, "flush", True)
        False
    """
    value = query.get(name)
    if value is None:
        return default
    if value == "y":
        return True
    if value == "n":
        return False
    raise _invalid(name, value)


def parse_int(query: Mapping[str, str], name: str, default: int) -> int:
    """
    Return non-negative integer parameter ``name``, or ``default`` if
    missing; anything but ASCII decimal digits raises ProtocolError 400
    naming the parameter. ``int()`` would also take "+5", " 5", "5_000"
    and non-ASCII digits, which other parties (a proxy, a cache) may read
    differently or reject.

        >>> parse_int({"block_size": "4096"}, "block_size", 0)
        4096
    """
    value = query.get(name)
    if value is None:
        return default
    expected = "expecting a non-negative integer"
    if not _DIGITS.fullmatch(value):
        raise _invalid(name, value, expected)
    try:
        return int(value)
    except ValueError:
        # More digits than int() accepts (sys.int_info.str_digits_check).
        raise _invalid(name, value[:20] + "...", expected) from None


def _invalid(name: str, value: str, expected: str | None = None
             ) -> ProtocolError:
    message = f"Invalid value for {name!r}: {value!r}"
    if expected:
        message += f" ({expected})"
    return ProtocolError(400, message)
