# SPDX-License-Identifier: GPL-2.0-or-later
"""
NBD transmission phase, sans-IO: request headers in, checks, replies out.

Theory of operation
===================

After the handshake every client message is a 28 byte request header,
followed for NBD_CMD_WRITE by ``length`` bytes of data. The door reads
a header, parses it (``parse_request``), asks ``check()`` whether the
export allows it, and then either answers the error ``check()`` named or
does the work and answers with the encoders below. WRITE data is not
parsed here: the door reads it straight into its I/O buffers.

Rules (the protocol's, and the bounds we add):

1. A header with a bad magic cannot be skipped: the stream is lost, and
   ``parse_request`` raises ``ProtocolViolation`` (hard disconnect).
2. A WRITE longer than the export's maximum block cannot be answered
   without reading data we refuse to buffer: ``check`` returns
   ``DISCONNECT`` for it. Every other bad request gets an error reply
   and the connection goes on, as the protocol says:
   EPERM for writes to a read-only export, ENOSPC for writes past the
   end, EINVAL for reads past the end, unknown commands and flags, empty
   ranges and over-long reads, and BLOCK_STATUS without a meta context.
3. Once structured replies are negotiated, READ is always answered with
   structured chunks, even its errors; other commands may use simple
   replies, which we do for everything but READ and BLOCK_STATUS.
4. Block status descriptors never reach past the requested range, and
   NBD_CMD_FLAG_REQ_ONE sends exactly one.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Iterable, Iterator

from ..util.extents import DirtyExtent, Extent, ZeroExtent
from . import wire
from .handshake import Export, ProtocolViolation

REQUEST_SIZE = 28

_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")

# check() result: close the connection without a reply.
DISCONNECT = -1

# Flags each command may carry (FUA is harmless anywhere, so accepted).
_ALLOWED_FLAGS = {
    wire.CMD_READ: wire.CMD_FLAG_FUA | wire.CMD_FLAG_DF,
    wire.CMD_WRITE: wire.CMD_FLAG_FUA,
    wire.CMD_DISC: 0,
    wire.CMD_FLUSH: wire.CMD_FLAG_FUA,
    wire.CMD_TRIM: wire.CMD_FLAG_FUA,
    wire.CMD_CACHE: wire.CMD_FLAG_FUA,
    wire.CMD_WRITE_ZEROES: wire.CMD_FLAG_FUA | wire.CMD_FLAG_NO_HOLE,
    wire.CMD_BLOCK_STATUS: wire.CMD_FLAG_REQ_ONE,
}

_WRITES = frozenset({wire.CMD_WRITE, wire.CMD_TRIM, wire.CMD_WRITE_ZEROES})
_RANGED = frozenset({wire.CMD_READ, wire.CMD_WRITE, wire.CMD_TRIM,
                     wire.CMD_CACHE, wire.CMD_WRITE_ZEROES,
                     wire.CMD_BLOCK_STATUS})
_LIMITED = frozenset({wire.CMD_READ, wire.CMD_WRITE})


@dataclasses.dataclass(frozen=True)
class Request:
    """A request header."""

    flags: int
    type: int
    handle: int
    offset: int
    length: int

    @property
    def name(self) -> str:
        return wire.COMMAND_NAMES.get(self.type, f"CMD_{self.type}")

    @property
    def fua(self) -> bool:
        return bool(self.flags & wire.CMD_FLAG_FUA)


def parse_request(header: bytes | bytearray | memoryview) -> Request:
    """
    Parse a 28 byte request header.

    >>> parse_request(bytes.fromhex("25609513" "0001" "0001"
    ...     "0000000000000007" "0000000000001000" "00000200"))
    Request(flags=1, type=1, handle=7, offset=4096, length=512)
    """
    if len(header) != REQUEST_SIZE:
        raise ValueError(f"Request header of {len(header)} bytes")
    magic, flags, type_, handle, offset, length = _REQUEST.unpack(header)
    if magic != wire.REQUEST_MAGIC:
        raise ProtocolViolation(f"Bad request magic {magic:#x}")
    return Request(flags, type_, handle, offset, length)


def check(req: Request, export: Export, structured: bool,
          contexts: dict[int, str]) -> int:
    """
    0 if the export serves ``req``, else the NBD error to answer, or
    ``DISCONNECT`` (see rule 2).
    """
    if req.type == wire.CMD_WRITE and req.length > export.maximum_block:
        return DISCONNECT
    allowed = _ALLOWED_FLAGS.get(req.type)
    if allowed is None or req.flags & ~allowed:
        return wire.EINVAL
    if req.type in _WRITES and export.readonly:
        return wire.EPERM
    if req.type in _RANGED:
        if req.length == 0:
            return wire.EINVAL
        if req.offset + req.length > export.size:
            return wire.ENOSPC if req.type in _WRITES else wire.EINVAL
    elif req.offset or req.length:
        # FLUSH and DISC carry no range.
        return wire.EINVAL
    if req.type in _LIMITED and req.length > export.maximum_block:
        return wire.EINVAL
    if req.type == wire.CMD_BLOCK_STATUS and not (structured and contexts):
        return wire.EINVAL
    return 0


# Replies.


def simple_reply(handle: int, error: int = 0) -> bytes:
    """A simple reply; a successful READ's data follows it."""
    return _SIMPLE.pack(wire.SIMPLE_REPLY_MAGIC, error, handle)


def chunk_header(handle: int, type_: int, length: int,
                 done: bool = True) -> bytes:
    """A structured reply chunk header for ``length`` payload bytes."""
    flags = wire.REPLY_FLAG_DONE if done else 0
    return _CHUNK.pack(wire.STRUCTURED_REPLY_MAGIC, flags, type_, handle,
                       length)


def offset_data_header(handle: int, offset: int, length: int,
                       done: bool = True) -> bytes:
    """
    The header and offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk;
    ``length`` bytes of data follow it.
    """
    return (chunk_header(handle, wire.REPLY_TYPE_OFFSET_DATA, 8 + length,
                         done)
            + struct.pack(">Q", offset))


def done_chunk(handle: int) -> bytes:
    """The final, empty chunk (NBD_REPLY_TYPE_NONE)."""
    return chunk_header(handle, wire.REPLY_TYPE_NONE, 0)


def error_chunk(handle: int, error: int, message: str = "") -> bytes:
    """A final NBD_REPLY_TYPE_ERROR chunk with a message for humans."""
    text = message.encode()[:wire.MAX_STRING]
    payload = struct.pack(">IH", error, len(text)) + text
    return chunk_header(handle, wire.REPLY_TYPE_ERROR, len(payload)) + payload


def error_reply(handle: int, error: int, structured: bool,
                message: str = "") -> bytes:
    """An error answer in the form the session uses."""
    if structured:
        return error_chunk(handle, error, message)
    return simple_reply(handle, error)


def block_status_chunk(handle: int, context_id: int,
                       descriptors: Iterable[tuple[int, int]],
                       done: bool) -> bytes:
    """An NBD_REPLY_TYPE_BLOCK_STATUS chunk of (length, status) pairs."""
    body = bytearray(struct.pack(">I", context_id))
    for length, status in descriptors:
        body += struct.pack(">II", length, status)
    return (chunk_header(handle, wire.REPLY_TYPE_BLOCK_STATUS, len(body),
                         done) + body)


def status_flags(extent: Extent, context: str = "") -> int:
    """
    The status bits of an extent in ``context``: a zero extent is
    reported in ``base:allocation``, or in ``qemu:allocation-depth`` as
    depth 0 for a hole (allocated nowhere in the backing chain) and 1
    for the rest (the zero context does not tell the layers of a chain
    apart: ranges of a backing file show as 1, where qemu says 2).
    """
    if context == wire.CONTEXT_ALLOCATION_DEPTH:
        assert isinstance(extent, ZeroExtent)
        return 0 if extent.hole else 1
    if isinstance(extent, ZeroExtent):
        return ((wire.STATE_HOLE if extent.hole else 0)
                | (wire.STATE_ZERO if extent.zero else 0))
    assert isinstance(extent, DirtyExtent)
    return wire.STATE_DIRTY if extent.dirty else 0


# A descriptor's length is 32 bits: longer extents are split.
_MAX_DESCRIPTOR = 2**32 - 4096


def descriptors(extents: Iterable[Extent], offset: int, length: int,
                one: bool = False, context: str = ""
                ) -> list[tuple[int, int]]:
    """
    (length, status) descriptors of ``extents`` within
    ``[offset, offset + length)`` (rule 4), in ``context`` (see
    ``status_flags``); neighbours of equal status are joined (extents
    differing in the zero context may not differ in another). Stops
    reading ``extents`` once past the range, so a long extent list is
    not walked to its end.

    >>> descriptors([ZeroExtent(0, 100, False, False),
    ...              ZeroExtent(100, 100, True, True)], 50, 100)
    [(50, 0), (50, 3)]
    >>> descriptors([ZeroExtent(0, 100, False, False),
    ...              ZeroExtent(100, 100, True, False),
    ...              ZeroExtent(200, 100, True, True)], 0, 300,
    ...             context="qemu:allocation-depth")
    [(200, 1), (100, 0)]
    """
    end = offset + length
    result: list[tuple[int, int]] = []
    for ext in _clip(extents, offset, end):
        status = status_flags(ext, context)
        n = ext.length
        if result and result[-1][1] == status and not one:
            join = min(n, _MAX_DESCRIPTOR - result[-1][0])
            result[-1] = (result[-1][0] + join, status)
            n -= join
        while n:
            step = min(n, _MAX_DESCRIPTOR)
            result.append((step, status))
            if one:
                return result
            n -= step
    return result


def _clip(extents: Iterable[Extent], start: int, end: int
          ) -> Iterator[Extent]:
    for ext in extents:
        if ext.end <= start:
            continue
        if ext.start >= end:
            return
        lo = max(ext.start, start)
        hi = min(ext.end, end)
        yield dataclasses.replace(ext, start=lo, length=hi - lo)
