# SPDX-License-Identifier: GPL-2.0-or-later
"""
The ledger of a ticket: which ranges of the image were written.

Theory of operation
-------------------

Every write that completed (a PUT answered 200, a zero request) adds its
range with :meth:`Ledger.add`, whichever connection or protocol door ran
it, so the ledger is shared by all connections of the ticket. So does a
write cut before its end (client gone, connection reset): it adds the
prefix that reached storage, since its operation writes in order and
counts only what storage accepted (``Operation.done``). A cut prefix is
written data like any other: it is not durable before a later flush. A
client resuming an interrupted upload, or retrying a cut request, reads
the ledger back as extents (:meth:`Ledger.extents`) and sends only what
is missing.

A range is *written* once the write returned; it is *durable* once a
flush that started after it returned. :meth:`Ledger.flushing` takes the
snapshot of the ranges a flush covers before the flush starts, and
:meth:`Ledger.flushed` marks them durable when it succeeded, so a write
that completes while the flush runs is never counted as durable by it.

Checkpoints. A client may flush rarely (once, at the end), so the daemon
does not wait for it: every data write adds its bytes to a count of what
was written since the last flush started (:meth:`Ledger.add` with
``pending=True``; zeroing is cheap to repeat and does not count). A
long write reports each piece storage accepted (``Operation.progress``),
so its written prefix is in the ledger, and can become durable, while
it still runs. Once
the count reaches the ticket's bound (:func:`checkpoint_bound`), the
write that reached it claims a checkpoint (:meth:`Ledger.checkpoint_due`)
and runs an ordinary flush through the ticket, so the same
``flushing``/``flushed`` bookkeeping decides what became durable, and the
ledger file is saved as after a client's flush. One checkpoint runs at a
time; writes completing meanwhile count toward the next one. A flush
starting resets the count, whoever asked for it, so a client flushing
often gets no extra flushes.

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

# A checkpoint covers at most this share of the image: after a daemon
# crash a resumed upload sends again at most one bound plus the requests
# in flight (4 connections of 8 MiB, 1.6% of 2 GiB), so 1/32 (3.1%)
# keeps the total under the 5% target.
CHECKPOINT_SHARE = 32

# ...but never less than this: the largest upload request of a resuming
# client (client/_resume.LEDGER_REQUEST); a smaller bound would flush
# after every request of a small image.
MIN_CHECKPOINT = 8 * 1024**2


def checkpoint_bound(option: int, size: int) -> int:
    """
    The checkpoint bound of an image of ``size`` bytes for the
    configured ``[daemon] checkpoint_size``: the option, or the image's
    share when smaller (down to MIN_CHECKPOINT); 0 (never) when the
    option is 0.

        >>> MiB = 1024**2
        >>> checkpoint_bound(64 * MiB, 1024 * MiB) // MiB
        32
        >>> checkpoint_bound(64 * MiB, 16 * 1024 * MiB) // MiB
        64
        >>> checkpoint_bound(0, 1024 * MiB)
        0
    """
    if option <= 0:
        return 0
    return min(option, max(size // CHECKPOINT_SHARE, MIN_CHECKPOINT))


def checkpoint_due(pending: int, bound: int) -> bool:
    """
    Whether ``pending`` bytes written since the last flush call for a
    checkpoint under ``bound`` (0: never).

        >>> checkpoint_due(64, 64), checkpoint_due(63, 64)
        (True, False)
    """
    return bound > 0 and pending >= bound


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
        # Data bytes written since the last flush started, and whether a
        # checkpoint is running (see "Checkpoints" above).
        self._pending = 0
        self._checkpointing = False

    def add(self, start: int, end: int, pending: bool = False) -> None:
        """
        Record that ``[start, end)`` was written (clipped to the size);
        ``pending`` counts it toward the next checkpoint (data not yet
        flushed).
        """
        end = min(end, self.size)
        if start >= end:
            return
        with self._lock:
            self._written.add(start, end)
            if pending:
                self._pending += end - start

    def written(self) -> int:
        """Bytes written so far."""
        with self._lock:
            return self._written.total()

    def flushing(self) -> RangeSet:
        """The ranges a flush starting now makes durable."""
        with self._lock:
            # Whether it succeeds or not, what it covers no longer calls
            # for a checkpoint: a failed flush fails its request.
            self._pending = 0
            return self._written.copy()

    def checkpoint_due(self, bound: int) -> bool:
        """
        Whether the caller should run a checkpoint now. True claims it:
        no other caller gets True until :meth:`checkpoint_done`.
        """
        with self._lock:
            if self._checkpointing or not checkpoint_due(self._pending,
                                                         bound):
                return False
            self._checkpointing = True
            return True

    def checkpoint_done(self) -> None:
        """The claimed checkpoint ended (succeeded or failed)."""
        with self._lock:
            self._checkpointing = False

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
