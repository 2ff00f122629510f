# SPDX-License-Identifier: GPL-2.0-or-later
"""
nbdd.queued: one thread serving a connection through the backend's
IOQueue, against the memory backend's queue (requests finish when
collected, newest first) and scripted streams, one of which takes only
a few bytes per send.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from ovirt_imageio.backends.memory import MemoryBackend, MemoryQueue
from ovirt_imageio.nbd import handshake, wire
from ovirt_imageio.nbdd import buffers, queued
from ovirt_imageio.transfer.stream import MockStream
from ovirt_imageio.transfer.tickets import Ticket

from support import nbd_messages

SIZE = 1024**2
_SIMPLE = struct.Struct(">IIQ")


def request(type_: int, handle: int, offset: int = 0, length: int = 0,
            data: bytes = b"", flags: int = 0) -> bytes:
    return nbd_messages.request(type_, offset, length, flags, handle) + data


class Trickle(MockStream):
    """Takes at most ``step`` bytes per send_some, and none every other
    call, as a socket whose buffer is full."""

    def __init__(self, chunks: list[bytes], step: int) -> None:
        super().__init__(chunks)
        self._step = step
        self._calls = 0
        self.partial = 0

    def send_some(self, data: Any) -> int:
        self._calls += 1
        if self._calls % 2:
            self.partial += 1
            return 0
        view = memoryview(data).cast("B")[:self._step]
        self.sent += view
        return len(view)


def make_ticket() -> Ticket:
    return nbd_messages.write_ticket(SIZE)


def serve(stream: MockStream, backend: MemoryBackend,
          budget: int = 8 * 1024**2, ticket: Ticket | None = None
          ) -> tuple[list[tuple[int, int]], MemoryQueue, list[Any]]:
    """Run a connection to its end; return the (handle, error) of the
    simple replies in the order sent (READ data skipped), the queue, and
    what the done callback saw."""
    ready = handshake.Ready(
        "test-ticket", handshake.Export(size=SIZE, readonly=False),
        structured=False, contexts={}, go=True)
    bufs = buffers.Buffers(budget)
    queue = backend.io_queue(queued.DEPTH)
    done: list[Any] = []
    t = queued.QueuedTransmission(
        stream, ticket or make_ticket(), backend, ready, bufs,
        abort=lambda: None, done=lambda *args: done.append(args),
        queue=queue)
    try:
        t.run()
    finally:
        bufs.close()
    return replies(bytes(stream.sent), SIZE), queue, done


def replies(sent: bytes, read_length: int) -> list[tuple[int, int]]:
    out = []
    pos = 0
    while pos < len(sent):
        magic, error, handle = _SIMPLE.unpack_from(sent, pos)
        assert magic == wire.SIMPLE_REPLY_MAGIC
        out.append((handle, error))
        pos += _SIMPLE.size
        if handle >= 100 and not error:
            # Handles from 100 up are READs of read_length bytes here.
            pos += read_length
    return out


def test_writes_then_reads_round_trip() -> None:
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    a, b = b"a" * 4096, b"b" * 8192
    script = [request(wire.CMD_WRITE, 1, 0, len(a), a),
              request(wire.CMD_WRITE, 2, 4096, len(b), b),
              request(wire.CMD_DISC, 3)]
    answered, queue, done = serve(MockStream(script), backend)
    assert sorted(answered) == [(1, 0), (2, 0)]
    assert backend.data[:4096] == a
    assert backend.data[4096:12288] == b
    # Both went through the queue, and the done callback counts them.
    assert queue.submitted == [(True, 0, 4096), (True, 4096, 8192)]
    assert sorted((args[0].handle, args[2]) for args in done) == [
        (1, 4096), (2, 8192)]


def test_reads_come_back_out_of_order_with_their_data() -> None:
    data = bytearray(SIZE)
    for i in range(4):
        data[i * 4096:(i + 1) * 4096] = bytes([i + 1]) * 4096
    backend = MemoryBackend(data, queue=True)
    script = [request(wire.CMD_READ, 100 + i, i * 4096, 4096)
              for i in range(4)]
    stream = MockStream(script)
    serve(stream, backend)
    sent = bytes(stream.sent)
    got = {}
    pos = 0
    while pos < len(sent):
        _, error, handle = _SIMPLE.unpack_from(sent, pos)
        assert error == 0
        pos += _SIMPLE.size
        got[handle] = sent[pos:pos + 4096]
        pos += 4096
    assert got == {100 + i: bytes([i + 1]) * 4096 for i in range(4)}


def test_partial_sends_keep_replies_whole() -> None:
    backend = MemoryBackend(bytearray(b"x" * SIZE), queue=True)
    script = [request(wire.CMD_READ, 100 + i, i * 65536, 65536)
              for i in range(8)]
    # Past the reads: requests in flight together run in any order.
    script += [request(wire.CMD_WRITE, 1, 8 * 65536, 4096, b"w" * 4096)]
    stream = Trickle(script, step=1000)
    serve(stream, backend)
    # Some replies waited for the socket while requests were read.
    assert stream.partial > 0
    sent = bytes(stream.sent)
    handles = []
    pos = 0
    while pos < len(sent):
        magic, error, handle = _SIMPLE.unpack_from(sent, pos)
        assert (magic, error) == (wire.SIMPLE_REPLY_MAGIC, 0)
        handles.append(handle)
        pos += _SIMPLE.size + (65536 if handle >= 100 else 0)
        if handle >= 100:
            assert sent[pos - 65536:pos] == b"x" * 65536
    assert pos == len(sent)
    assert sorted(handles) == [1] + [100 + i for i in range(8)]


class Full(MockStream):
    """A socket that takes ``step`` bytes per send, and nothing more
    until a wait says it is writable again."""

    def __init__(self, chunks: list[bytes], step: int) -> None:
        super().__init__(chunks)
        self._step = step
        self.full = False
        self.waits_writable = 0

    def send_some(self, data: Any) -> int:
        assert not self.full, "Sent to a full socket before waiting"
        view = memoryview(data).cast("B")[:self._step]
        self.sent += view
        self.full = len(view) < len(memoryview(data).cast("B"))
        return len(view)

    def readable_now(self) -> bool:
        # Each request only after a wait: replies go out while serving.
        return False

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        if write:
            self.waits_writable += 1
            self.full = False
        return read, write


def test_a_full_socket_is_not_sent_to_until_writable() -> None:
    backend = MemoryBackend(bytearray(b"x" * SIZE), queue=True)
    script = [request(wire.CMD_READ, 100 + i, i * 65536, 65536)
              for i in range(8)]
    stream = Full(script, step=20000)
    serve(stream, backend)
    sent = bytes(stream.sent)
    assert len(sent) == 8 * (_SIMPLE.size + 65536)
    assert stream.waits_writable > 0


def test_flush_waits_for_writes_before_it() -> None:
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    script = [request(wire.CMD_WRITE, 1, 0, 4096, b"a" * 4096),
              request(wire.CMD_WRITE, 2, 4096, 4096, b"b" * 4096),
              request(wire.CMD_FLUSH, 3),
              request(wire.CMD_WRITE, 4, 8192, 4096, b"c" * 4096)]
    answered, _, _ = serve(MockStream(script), backend)
    order = [h for h, _ in answered]
    assert order.index(3) > order.index(1)
    assert order.index(3) > order.index(2)
    assert backend.flush_count == 1


@pytest.mark.parametrize("flags,offset,length,why", [
    (wire.CMD_FLAG_FUA, 0, 4096, "a write with FUA flushes"),
    (0, SIZE - 4096, 8192, "past the image: the backend grows it"),
])
def test_refused_requests_run_through_the_backend(
        flags: int, offset: int, length: int, why: str) -> None:
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    data = b"z" * length
    script = [request(wire.CMD_WRITE, 1, offset, length, data, flags)]
    ready_size = max(SIZE, offset + length)
    # The export must admit the range for the request to reach storage.
    ticket = nbd_messages.write_ticket(ready_size)
    ready = handshake.Ready(
        "test-ticket", handshake.Export(size=ready_size, readonly=False),
        structured=False, contexts={}, go=True)
    stream = MockStream(script)
    bufs = buffers.Buffers(8 * 1024**2)
    queue = backend.io_queue(queued.DEPTH)
    queued.QueuedTransmission(stream, ticket, backend, ready, bufs,
                              abort=lambda: None, done=lambda *a: None,
                              queue=queue).run()
    bufs.close()
    assert replies(bytes(stream.sent), 0) == [(1, 0)], why
    assert queue.submitted == [], why
    assert backend.data[offset:offset + length] == data, why
    assert backend.flush_count == (1 if flags else 0), why


def test_spent_budget_collects_instead_of_waiting() -> None:
    # Room for two requests at a time: the thread must collect and send
    # replies to get buffers back, never wait for another thread.
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    n = 16
    script = [request(wire.CMD_WRITE, 1 + i, i * 65536, 65536,
                      bytes([i]) * 65536) for i in range(n)]
    budget = 2 * (buffers.HEADROOM + 65536)
    answered, queue, _ = serve(MockStream(script), backend, budget=budget)
    assert sorted(answered) == [(1 + i, 0) for i in range(n)]
    assert len(queue.submitted) == n
    for i in range(n):
        assert backend.data[i * 65536:(i + 1) * 65536] == bytes([i]) * 65536


def test_writes_enter_the_ledger() -> None:
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    ticket = make_ticket()
    script = [request(wire.CMD_WRITE, 1, 0, 4096, b"a" * 4096),
              request(wire.CMD_WRITE, 2, 65536, 8192, b"b" * 8192)]
    serve(MockStream(script), backend, ticket=ticket)
    assert ticket.ledger.written() == 4096 + 8192
    assert [(e.start, e.length) for e in ticket.ledger.extents()
            if e.written] == [(0, 4096), (65536, 8192)]
    assert not ticket.active


class Counting(MockStream):
    """Counts the replies in each send; ``readable`` is what
    readable_now answers, and each wait records the bytes sent so far."""

    def __init__(self, chunks: list[bytes], readable: bool) -> None:
        super().__init__(chunks)
        self.readable = readable
        self.per_send: list[int] = []
        self.sent_at_wait: list[int] = []

    def send_some(self, data: Any) -> int:
        n = super().send_some(data)
        self.per_send.append(n // _SIMPLE.size)
        return n

    def readable_now(self) -> bool:
        return self.readable

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        self.sent_at_wait.append(len(self.sent))
        return read, write


def writes(n: int) -> list[bytes]:
    return [request(wire.CMD_WRITE, 1 + i, i * 4096, 4096, b"w" * 4096)
            for i in range(n)]


def test_small_replies_leave_together_while_requests_wait() -> None:
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    stream = Counting(writes(40), readable=True)
    answered, _, _ = serve(stream, backend)
    assert sorted(answered) == [(1 + i, 0) for i in range(40)]
    assert max(stream.per_send) <= queued.SMALL_BATCH
    # Batches, not a send per reply.
    assert len(stream.per_send) <= 40 // queued.SMALL_BATCH + 2


class Lockstep(Counting):
    """A client that sends its next 4096-byte WRITE only once it has the
    replies to all it sent: the next request is readable only then. A
    thread waiting for a request while holding a reply would wait
    forever; here it fails after many waits instead."""

    REQUEST = len(writes(1)[0])

    def __init__(self, n: int) -> None:
        super().__init__(writes(n), readable=False)
        self._total = n
        self.waits = 0

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        self.waits += 1
        assert self.waits < 1000, "Waited for a request holding its reply"
        unread = sum(len(c) for c in self._chunks) // self.REQUEST
        answered = len(self.sent) // _SIMPLE.size
        return read and answered == self._total - unread, write


def test_replies_are_sent_before_waiting() -> None:
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    stream = Lockstep(3)
    answered, queue, _ = serve(stream, backend)
    assert sorted(answered) == [(1, 0), (2, 0), (3, 0)]
    # One at a time: each was kicked alone.
    assert queue.kicked == [1, 1, 1]


@pytest.mark.parametrize("batch", [1, 4])
def test_requests_read_together_start_together(
        batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queued, "SUBMIT_BATCH", batch)
    backend = MemoryBackend(bytearray(SIZE), queue=True)
    n = queued.SUBMIT_BATCH * 2 + 3
    answered, queue, _ = serve(MockStream(writes(n)), backend)
    assert sorted(answered) == [(1 + i, 0) for i in range(n)]
    # Rule 6: in batches while requests are there to read, the rest
    # before the thread waits.
    assert queue.kicked == [batch] * (n // batch) + (
        [n % batch] if n % batch else [])
