# SPDX-License-Identifier: GPL-2.0-or-later
"""
Range and Content-Range headers: parsing, resolution and formatting.

Only single byte ranges are supported, which is all image transfer
clients use: GET takes ``Range: bytes=FIRST-LAST`` or ``bytes=FIRST-``,
PUT takes ``Content-Range: bytes FIRST-LAST/COMPLETE`` and uses FIRST as
the write offset.

Range errors are 416 (the client asked for something we cannot serve);
Content-Range errors are 400 (a PUT describing its body wrongly is a bad
request, and 416 is defined for Range only).
"""

from __future__ import annotations

import dataclasses
import re

from .errors import ProtocolError

_RANGE_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")

_CONTENT_RANGE = re.compile(
    r"[ \t]*bytes[ \t]+([0-9]+)[ \t]*-[ \t]*([0-9]+|\*)"
    r"[ \t]*/[ \t]*([0-9]+|\*)[ \t]*",
    re.ASCII | re.IGNORECASE)

_UNSATISFIED = re.compile(
    r"[ \t]*bytes[ \t]+\*[ \t]*/.*", re.ASCII | re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Range:
    """
    A requested byte range: ``first`` to ``last`` inclusive, or to the
    end of the resource when ``last`` is None.
    """

    first: int
    last: int | None = None

    def __post_init__(self) -> None:
        if self.first < 0 or (self.last is not None
                              and self.last < self.first):
            raise ValueError(f"Invalid range: {self}")


@dataclasses.dataclass(frozen=True)
class ContentRange:
    """
    A request Content-Range: the body starts at ``first``; ``last`` and
    ``complete`` (the full resource length) are None when sent as "*".
    """

    first: int
    last: int | None
    complete: int | None


def parse_range(value: str) -> Range:
    """
    Parse a Range header value holding one byte range.

        >>> parse_range("bytes=0-99")
        Range(first=0, last=99)
        >>> parse_range("bytes=512-")
        Range(first=512, last=None)

    Anything else, including suffix ranges ("bytes=-N") and multiple
    ranges, raises ProtocolError 416. Positions past the largest file
    offset are valid syntax and saturate just past it, so that
    :func:`resolve_range` answers them like any other position past the
    end (a first byte: 416 with the size; a last byte: clamped)::

        >>> parse_range(f"bytes=0-{2**70}").last == MAX_NUMBER + 1
        True
    """
    unit, eq, spec = value.partition("=")
    unit = unit.strip(" \t")
    if not eq or not unit.isascii() or unit.lower() != "bytes":
        raise ProtocolError(416, f"Unsupported range: {value!r}")
    if "," in spec:
        raise ProtocolError(
            416, f"Multiple ranges are not supported: {value!r}")
    m = _RANGE_SPEC.fullmatch(spec)
    if m is None or not m.group(1) and not m.group(2):
        raise ProtocolError(416, f"Invalid range: {value!r}")
    if not m.group(1):
        raise ProtocolError(
            416, f"Suffix range is not supported: {value!r}")
    first = _saturate(m.group(1))
    if not m.group(2):
        return Range(first)
    last = _saturate(m.group(2))
    if first > last:
        raise ProtocolError(
            416, f"Range first byte is after last byte: {value!r}")
    return Range(first, last)


def resolve_range(rng: Range | None, available: int) -> tuple[int, int, bool]:
    """
    Return (offset, length, partial) to serve ``rng`` from a resource of
    ``available`` bytes.

    Without a range the whole resource is served (partial is False). A
    range starting at or after the end raises ProtocolError 416 with the
    ``Content-Range: bytes */available`` header RFC 7233 4.4 asks for. A
    range ending after the end is clamped to the end, as RFC 7233 2.1
    requires (upstream answered 416 instead)::

        >>> resolve_range(Range(100, 10**9), 1000)
        (100, 900, True)
    """
    if available < 0:
        raise ValueError(f"Invalid available size: {available}")
    if rng is None:
        return 0, available, False
    if rng.first >= available:
        raise ProtocolError(
            416,
            f"Requested range starts at {rng.first}, beyond the available "
            f"{available} bytes",
            {"Content-Range": format_unsatisfied_range(available)})
    last = available - 1
    if rng.last is not None and rng.last < last:
        last = rng.last
    return rng.first, last - rng.first + 1, True


def parse_content_range(value: str) -> ContentRange:
    """
    Parse a request Content-Range value "bytes FIRST-LAST/COMPLETE",
    where LAST and COMPLETE may be "*".

        >>> parse_content_range("bytes 100-199/*")
        ContentRange(first=100, last=199, complete=None)

    "bytes */COMPLETE" has no first byte, so it cannot place a PUT body
    and is rejected like any malformed value: ProtocolError 400. So are
    LAST < FIRST and LAST >= COMPLETE (RFC 7233 4.2).
    """
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None:
        if _UNSATISFIED.fullmatch(value):
            raise ProtocolError(
                400, f"Content-Range without first byte: {value!r}")
        raise ProtocolError(400, f"Invalid Content-Range: {value!r}")
    first = _to_int(m.group(1), 400, value)
    last = None if m.group(2) == "*" else _to_int(m.group(2), 400, value)
    complete = None if m.group(3) == "*" else _to_int(m.group(3), 400, value)
    if last is not None:
        if last < first:
            raise ProtocolError(
                400, f"Content-Range last byte before first: {value!r}")
        if complete is not None and last >= complete:
            raise ProtocolError(
                400,
                f"Content-Range last byte not before complete length: "
                f"{value!r}")
    return ContentRange(first, last, complete)


def format_content_range(first: int, last: int, complete: int | None) -> str:
    """
    Format a response Content-Range; ``complete`` None is sent as "*".

        >>> format_content_range(0, 99, 1000)
        'bytes 0-99/1000'
    """
    if first < 0 or last < first or (complete is not None
                                     and complete <= last):
        raise ValueError(
            f"Invalid content range: first={first} last={last} "
            f"complete={complete}")
    total = "*" if complete is None else str(complete)
    return f"bytes {first}-{last}/{total}"


def format_unsatisfied_range(complete: int) -> str:
    """
    Format the Content-Range of a 416 response.

        >>> format_unsatisfied_range(1000)
        'bytes */1000'
    """
    if complete < 0:
        raise ValueError(f"Invalid complete length: {complete}")
    return f"bytes */{complete}"


# The largest file offset (off_t). Bigger numbers are far beyond any
# image, and refusing them keeps the arithmetic on them small: a number
# of thousands of digits plus one may no longer convert to a string for
# an error message (sys.int_info.str_digits_check).
MAX_NUMBER = 2**63 - 1


def _saturate(digits: str) -> int:
    """A byte position, at most ``MAX_NUMBER + 1``."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > 19:
        # Longer than any off_t, and int() of thousands of digits costs.
        return MAX_NUMBER + 1
    return min(int(digits), MAX_NUMBER + 1)


def _to_int(digits: str, status: int, value: str) -> int:
    try:
        number = int(digits)
    except ValueError:
        # More digits than int() accepts.
        number = MAX_NUMBER + 1
    if number > MAX_NUMBER:
        raise ProtocolError(status, f"Number too large: {value[:80]!r}")
    return number
