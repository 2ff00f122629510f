# SPDX-License-Identifier: GPL-2.0-or-later
"""
Streaming a range through one HTTP request, for the copy engine and
ImageioClient.

Copying between a local image and an HTTP server one buffer at a time
costs one request per buffer. Streaming sends a whole range in one
request instead: one PUT whose body is read from a local reader as it is
sent (``read_from``), or one GET whose body is written to a local writer as
it arrives (``write_to``), both through the caller's buffer.

With a second buffer and an executor, local I/O of one chunk overlaps
the network transfer of the next (util.pipeline): an upload reads chunk
N+1 in the executor while chunk N is sent, a download writes chunk N in
the executor while chunk N+1 is received. The reader or writer is still
called by one thread at a time, in order.

A PUT streamed from a reader that can be rewound (``rewind``) may be
sent again when its connection breaks (see backends.http_retry): each
attempt rewinds the reader to the start of the range and sends the whole
range again, or, to a server that tells what a cut PUT wrote, only the
rest after the written prefix (``Resend``). Without a rewind the request
is sent once.

The HTTP side is any object with the http backend's streaming calls
(``put_stream``, ``get_stream``), so the copy engine can be tested with an
in-memory one.
"""

from __future__ import annotations

import functools
from concurrent.futures import Executor
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from ..backends.base import BackendError, byte_view
from ..backends.http import BodySender
from ..util import pipeline


class Reader(Protocol):
    def readinto(self, buf: memoryview) -> int: ...


class Writer(Protocol):
    def write(self, data: memoryview) -> Any: ...


class Body(Protocol):
    """A response body read in parts (backends.http.RangeBody)."""

    def __enter__(self) -> Body: ...

    def __exit__(self, *args: object) -> None: ...

    def readinto(self, view: memoryview) -> None: ...


# Given skip, the body of a streamed PUT from its byte skip on, so a
# retry sends only what the server lacks (backends.http put_stream).
Resend = Callable[[int], BodySender]


@runtime_checkable
class Target(Protocol):
    def put_stream(self, offset: int, length: int, send: BodySender,
                   repeatable: bool = False,
                   resend: Resend | None = None) -> None: ...


@runtime_checkable
class Source(Protocol):
    def get_stream(self, offset: int, length: int) -> Body: ...


def read_from(dst: Target, reader: Reader, offset: int, length: int,
              buf: memoryview, spare: memoryview | None = None,
              executor: Executor | None = None,
              rewind: Callable[[int], None] | None = None,
              sending: Callable[[memoryview], None] | None = None) -> None:
    """
    Write length bytes from reader at offset of dst, in one PUT whose
    body is streamed through buf with reader.readinto(). With spare and
    executor, reading overlaps sending. With rewind, which must move the
    reader to ``skip`` bytes past where it was when read_from was called,
    the PUT may be sent again after a broken connection, whole or from
    any byte on. sending, if given, gets each chunk just before it is
    sent, in the sending thread.
    """
    bufs, submit = _buffers(buf, spare, executor, length)
    sent = False

    def send(send_data: Callable[[memoryview], None]) -> None:
        nonlocal sent
        if sent and rewind is not None:
            rewind(0)
        sent = True
        _send(reader, length, bufs, submit, send_data, sending)

    if rewind is None:
        dst.put_stream(offset, length, send)
        return

    def resend(skip: int) -> BodySender:
        def send_rest(send_data: Callable[[memoryview], None]) -> None:
            rewind(skip)
            _send(reader, length - skip, bufs, submit, send_data, sending)
        return send_rest

    dst.put_stream(offset, length, send, repeatable=True, resend=resend)


def write_to(src: Source, writer: Writer, offset: int, length: int,
             buf: memoryview, spare: memoryview | None = None,
             executor: Executor | None = None) -> None:
    """
    Send length bytes at offset of src to writer.write(), from one GET
    whose body is received through buf; src must hold the whole range.
    With spare and executor, writing overlaps receiving.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"Invalid range: offset={offset} length={length}")
    if length == 0:
        return
    bufs, submit = _buffers(buf, spare, executor, length)
    size = len(bufs[0])

    with src.get_stream(offset, length) as body:
        def receive() -> Iterator[memoryview]:
            received = 0
            i = 0
            while received < length:
                # With two buffers, the write of the chunk that was in
                # this one has been waited for (see util.pipeline).
                chunk = bufs[i % 2][:min(size, length - received)]
                body.readinto(chunk)
                received += len(chunk)
                yield chunk
                i += 1

        pipeline.write_behind(receive(), writer.write, submit)


def _send(reader: Reader, length: int, bufs: tuple[memoryview, memoryview],
          submit: pipeline.Submit | None,
          send_data: Callable[[memoryview], None],
          sending: Callable[[memoryview], None] | None = None) -> None:
    """Send length bytes from reader, reading chunk N+1 while N is sent."""
    size = len(bufs[0])
    filled = 0

    def fill(i: int) -> memoryview:
        nonlocal filled
        chunk = bufs[i % 2][:min(size, length - filled)]
        n = reader.readinto(chunk)
        if not n:
            raise BackendError(
                f"Reader ended after {filled} of {length} bytes")
        filled += n
        return chunk[:n]

    def reads() -> Iterator[Callable[[], memoryview]]:
        # Asked for the next read only once the one before ended, so
        # filled is up to date.
        i = 0
        while filled < length:
            yield functools.partial(fill, i)
            i += 1

    def send(chunk: memoryview) -> None:
        if sending is not None:
            sending(chunk)
        send_data(chunk)

    pipeline.read_ahead(reads(), send, submit)


def _buffers(buf: memoryview, spare: memoryview | None,
             executor: Executor | None, length: int
             ) -> tuple[tuple[memoryview, memoryview],
                        pipeline.Submit | None]:
    """
    The two buffers, of equal size, and how to overlap them, for moving
    length bytes. Without a spare buffer or an executor there is no
    overlap, and one buffer serves every chunk.
    """
    view = byte_view(buf)
    submit = None
    bufs = (view, view)
    if spare is not None and executor is not None:
        other = byte_view(spare)
        size = min(len(view), len(other))
        bufs = (view[:size], other[:size])
        submit = executor.submit
    if length and not bufs[0]:
        raise ValueError("Empty buffer")
    return bufs, submit
