# SPDX-License-Identifier: GPL-2.0-or-later
"""
The backend protocol: storage behind a ticket.

A backend is opened once per (connection, ticket) and used by one thread
at a time; concurrency comes from several connections, each with its own
backend, unless its capabilities allow more (``concurrent_reads``,
``concurrent``). All I/O is positional (no seek/tell), so a backend never
carries hidden position state between requests.

Alignment contract: ``capabilities.block_size`` is the unit in which the
backend does I/O efficiently (1 for memory and nbd, the logical block size
for O_DIRECT files). Callers *should* read and write aligned ranges from
page-aligned buffers (the server does); backends *must* still accept any
offset and length and do the unaligned head and tail themselves (read,
modify, write for writes), so correctness never depends on the caller.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Literal, Protocol

from ..http.errors import ProtocolError
from ..util.errors import ImageioError
from ..util.extents import Extent

Mode = Literal["r", "r+"]


class BackendError(ImageioError):
    """Base class for backend errors that are not plain OSErrors."""


class UnsupportedContext(BackendError):
    """The backend cannot report extents for the requested context."""


class Unreachable(BackendError):
    """
    The server behind the backend (an NBD server, a remote daemon) cannot
    be reached, or the connection to it broke. The daemon answers these
    with 502 Bad Gateway: it works, what it relays to does not.
    """


class RemoteError(BackendError, ProtocolError):
    """
    An HTTP backend's remote server answered with an error status.

    It is also a ``ProtocolError`` carrying the remote status and message
    (and headers such as a 416's ``Content-Range``), so a proxy answers
    its own client with exactly what the remote said, with no mapping in
    the server.
    """

    def __init__(self, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        ProtocolError.__init__(self, status, message, headers)

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can do, reported to clients in OPTIONS."""

    # Unit of efficient I/O; offsets and lengths aligned to it avoid
    # read-modify-write.
    block_size: int = 1
    # Advisory connection counts reported to clients.
    max_readers: int = 1
    max_writers: int = 1
    # Extents contexts the backend can report ("zero", "dirty").
    extents: frozenset[str] = frozenset({"zero"})
    # The NBD meta context behind "dirty" extents
    # ("qemu:dirty-bitmap:NAME"), so the NBD door can export it under the
    # same name; empty without dirty extents.
    dirty_context: str = ""
    # Whether a "zero" extent's hole means allocation depth 0 (nowhere in
    # the backing chain) and the rest depth 1 or more: files, which have
    # no chain (never a hole), and NBD exports offering
    # qemu:allocation-depth. The NBD door then offers that context.
    allocation_depth: bool = False
    # Whether zero and flush are native (False means emulated or no-op).
    zero: bool = True
    flush: bool = True
    # Whether a flush through this handle also makes durable what other
    # handles of the same image wrote before it started: an fsync covers
    # the file whatever descriptor wrote; an NBD server promises it only
    # with NBD_FLAG_CAN_MULTI_CONN. The daemon checkpoints a ticket's
    # ledger on its own only through such handles.
    shared_flush: bool = False
    # Whether readinto may run in several threads at once (with no other
    # call in between), letting a checksum keep several reads in flight.
    concurrent_reads: bool = False
    # Whether every call (readinto, write, zero, flush, extents) may run
    # in several threads at once on distinct ranges, letting the NBD door
    # keep a connection's requests in flight together.
    concurrent: bool = False
    # Whether write() copies less from a view of a whole bytearray than
    # from aligned buffers: a binding that takes only bytes or bytearray
    # objects (librbd's) otherwise needs a copy of each buffer. Uploads
    # then borrow bytearray buffers (transfer.buffers, "Kinds").
    bytearray_buffers: bool = False
    # Whether the backend is a PieceReader whose reads come back in memory
    # of its own (librbd's binding returns a new bytes object per read):
    # downloads then send those pieces as they are, instead of copying
    # them into a buffer through readinto.
    read_pieces: bool = False
    # Whether the backend is a Queueing one: one thread may keep many
    # reads and writes in flight through an IOQueue and collect their
    # completions (the NBD door's connections, instead of a thread per
    # request in flight).
    io_queue: bool = False


class PieceReader(Protocol):
    """A backend with ``Capabilities.read_pieces``."""

    def read_pieces(self, offset: int, length: int) -> list[memoryview]:
        """
        The bytes from offset, in order, in pieces of the backend's own
        memory that the caller may keep: length bytes, or less only when
        the image ends first.
        """
        ...


class IOQueue(Protocol):
    """
    Reads and writes in flight together, started and collected by one
    thread (a backend with ``Capabilities.io_queue``). Each buffer is the
    caller's and must stay untouched until its request is collected.
    """

    def fileno(self) -> int:
        """A descriptor readable while finished requests wait in
        ``completed()``: the caller polls it with its socket."""
        ...

    def wants_write(self) -> bool:
        """Whether the caller must also wait for fileno() to be writable
        (a queue its caller drives, whose requests wait to be sent)."""
        ...

    def submit(self, write: bool, offset: int, buf: memoryview, tag: int
               ) -> bool:
        """
        Take reading [offset, offset + len(buf)) into buf, or writing
        buf there, and return True; later ``completed()`` names tag. The
        request may wait in the queue until ``kick``. False when this
        request must take the backend's synchronous calls instead
        (unaligned, past the end, bigger than one request): nothing was
        taken then.
        """
        ...

    def kick(self) -> None:
        """Start the requests taken and still waiting; the caller kicks
        before it waits on fileno(), which may otherwise never become
        readable."""
        ...

    def completed(self) -> list[tuple[int, bool]]:
        """
        The requests finished since the last call, as (tag, whether all
        their bytes moved), without waiting. A request that failed or
        came short is run again through the synchronous calls by the
        caller, whose error is then the request's.
        """
        ...

    def close(self) -> None:
        """Release the queue; every request must have been collected."""
        ...


class Queueing(Protocol):
    """A backend with ``Capabilities.io_queue``."""

    def io_queue(self, depth: int) -> IOQueue:
        """A queue of up to ``depth`` requests in flight. Raises OSError
        if the backend cannot make one now; the caller then uses the
        synchronous calls."""
        ...


class Backend(Protocol):
    """Storage behind a ticket. See the module docstring for the rules."""

    @property
    def name(self) -> str:
        """Short backend name for logs and metrics ("file", "nbd", ...)."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        ...

    def size(self) -> int:
        """Current size of the image in bytes."""
        ...

    def readinto(self, offset: int, buf: memoryview) -> int:
        """
        Fill buf with bytes starting at offset.

        Returns the number of bytes read: len(buf), or less only when the
        image ends before the buffer is full.
        """
        ...

    def write(self, offset: int, buf: memoryview) -> None:
        """Write all of buf at offset; the image grows if needed."""
        ...

    def zero(self, offset: int, length: int) -> None:
        """Make the range read as zeros (deallocating it if sparse)."""
        ...

    def flush(self) -> None:
        """Make previous writes durable."""
        ...

    def extents(self, context: str = "zero", start: int = 0,
                end: int | None = None) -> Iterator[Extent]:
        """
        Yield the image's extents in context "zero" or "dirty" covering
        ``[start, min(end, size))`` (end None: the image end), cut at both
        ends, following the rules of ``util.extents``. Raises
        UnsupportedContext if the backend cannot provide the context.

        A window costs what its range costs, not what the image before it
        does: backends start their scan at start (a client asking a
        multi-TiB image in windows would otherwise pay for every window
        before the one it asks).
        """
        ...

    def close(self) -> None:
        ...


def byte_view(buf: memoryview) -> memoryview:
    """
    A flat view of bytes over buf, whatever its item format and shape, so
    lengths and slices count bytes.

    >>> len(byte_view(memoryview(bytearray(8)).cast("I")))
    8
    """
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view
