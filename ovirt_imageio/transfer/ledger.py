# SPDX-License-Identifier: GPL-2.0-or-later
"""
The ledger of a ticket: which ranges of the image were written.

Theory of operation
-------------------

Every write that completed (a PUT answered 200, a zero request) adds its
range with :meth:`Ledger.add`, whichever connection or protocol door ran
it, so the ledger is shared by all connections of the ticket. A client
resuming an interrupted upload reads it back as extents
(:meth:`Ledger.extents`) and sends only what is missing.

A range is *written* once the write returned; it is *durable* once a
flush that started after it returned. :meth:`Ledger.flushing` takes the
snapshot of the ranges a flush covers before the flush starts, and
:meth:`Ledger.flushed` marks them durable when it succeeded, so a write
that completes while the flush runs is never counted as durable by it.

Only durable ranges survive the daemon: :class:`LedgerFiles` saves them
(after each flush and at a clean stop) in the run directory, one file per
ticket named by a hash of the ticket id (a file name never reveals an id),
mode 0600, written to a temporary file and renamed so a crash leaves the
old file or the new one, never half of one. A file records the ticket's
url and size; adding the ticket again with the same id, url and size
restores its ranges, anything else starts empty. A file that does not
parse or whose checksum does not match is ignored with a warning: a
ledger is trusted whole or not at all, since a wrong range means data a
resumed upload would never send.

Locking: one lock per ledger, held only for range set updates and copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator

from ..util.extents import WrittenExtent
from ..util.rangeset import RangeSet

log = logging.getLogger("ledger")

# Bumped when the file format changes; other versions are ignored.
FORMAT_VERSION = 1


class Ledger:
    """
    The written ranges of one ticket's image of ``size`` bytes.

    Example::

        >>> ledger = Ledger(100)
        >>> ledger.add(0, 10)
        >>> ledger.add(50, 100)
        >>> [(e.start, e.length, e.written) for e in ledger.extents()]
        [(0, 10, True), (10, 40, False), (50, 50, True)]
    """

    def __init__(self, size: int,
                 durable: RangeSet | None = None) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._written = durable.copy() if durable is not None else RangeSet()
        self._durable = durable.copy() if durable is not None else RangeSet()

    def add(self, start: int, end: int) -> None:
        """Record that ``[start, end)`` was written (clipped to the size)."""
        end = min(end, self.size)
        if start >= end:
            return
        with self._lock:
            self._written.add(start, end)

    def written(self) -> int:
        """Bytes written so far."""
        with self._lock:
            return self._written.total()

    def flushing(self) -> RangeSet:
        """The ranges a flush starting now makes durable."""
        with self._lock:
            return self._written.copy()

    def flushed(self, snapshot: RangeSet) -> None:
        """A flush that started at ``snapshot`` succeeded."""
        with self._lock:
            for start, end in snapshot.ranges():
                self._durable.add(start, end)

    def durable(self) -> RangeSet:
        """A copy of the ranges known to be on stable storage."""
        with self._lock:
            return self._durable.copy()

    def extents(self, start: int = 0, length: int | None = None
                ) -> Iterator[WrittenExtent]:
        """
        Ordered, gap-free extents covering ``[start, start + length)``
        (to the end of the image by default), clipped at both ends.
        """
        end = self.size if length is None else min(self.size,
                                                    start + length)
        if start >= end:
            return
        with self._lock:
            ranges = self._written.ranges()
        pos = start
        for rstart, rend in ranges:
            if rend <= pos:
                continue
            if rstart >= end:
                break
            if rstart > pos:
                yield WrittenExtent(pos, rstart - pos, False)
                pos = rstart
            stop = min(rend, end)
            yield WrittenExtent(pos, stop - pos, True)
            pos = stop
        if pos < end:
            yield WrittenExtent(pos, end - pos, False)


# Persistence.


def encode(url: str, size: int, ranges: RangeSet) -> bytes:
    """The file content recording ``ranges`` of the image at url."""
    body = {"version": FORMAT_VERSION, "url": url, "size": size,
            "ranges": ranges.ranges()}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return json.dumps({"sha256": digest, "ledger": text}).encode() + b"\n"


class DamagedLedger(ValueError):
    """A ledger file that cannot be trusted."""


def decode(data: bytes) -> tuple[str, int, RangeSet]:
    """
    Return (url, size, ranges) of a ledger file; DamagedLedger if any
    part of it is wrong.

        >>> url, size, ranges = decode(encode("file:///d", 9,
        ...                                   RangeSet([(0, 4)])))
        >>> url, size, ranges.ranges()
        ('file:///d', 9, [(0, 4)])
    """
    try:
        outer = json.loads(data)
        text = outer["ledger"]
        if hashlib.sha256(text.encode()).hexdigest() != outer["sha256"]:
            raise DamagedLedger("checksum mismatch")
        body = json.loads(text)
        if body["version"] != FORMAT_VERSION:
            raise DamagedLedger(f"unknown version {body['version']!r}")
        url, size = body["url"], body["size"]
        if not isinstance(url, str) or type(size) is not int or size < 0:
            raise DamagedLedger("invalid url or size")
        ranges = RangeSet()
        for start, end in body["ranges"]:
            if not (type(start) is int and type(end) is int
                    and 0 <= start < end <= size):
                raise DamagedLedger(f"invalid range {start!r}-{end!r}")
            ranges.add(start, end)
    except DamagedLedger:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedLedger(f"malformed: {e}") from None
    return url, size, ranges


class LedgerFiles:
    """Ledger files of the tickets, in one directory (the run directory)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, ticket_id: str) -> str:
        # A hash, so that listing the directory reveals no ticket id.
        name = hashlib.sha256(ticket_id.encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"ledger-{name}.json")

    def save(self, ticket_id: str, url: str, size: int,
             ranges: RangeSet) -> None:
        """Replace the ticket's file atomically."""
        data = encode(url, size, ranges)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ledger-")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path(ticket_id))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def load(self, ticket_id: str, url: str, size: int) -> RangeSet | None:
        """
        The durable ranges saved for this ticket, or None when there is
        no file, it belongs to another url or size, or it is damaged.
        """
        path = self.path(ticket_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            saved_url, saved_size, ranges = decode(data)
        except DamagedLedger as e:
            log.warning("Ignoring damaged ledger %s: %s", path, e)
            return None
        if (saved_url, saved_size) != (url, size):
            log.info("Ignoring ledger %s of another image", path)
            return None
        return ranges

    def remove(self, ticket_id: str) -> None:
        try:
            os.unlink(self.path(ticket_id))
        except FileNotFoundError:
            pass
