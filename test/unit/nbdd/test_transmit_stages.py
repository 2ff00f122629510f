# SPDX-License-Identifier: GPL-2.0-or-later
"""
The storage stage of a transmission with a concurrent backend: requests
overlap, replies leave in completion order, FLUSH waits for the requests
before it. The stream is scripted (no socket): it serves the request
bytes, then EOF, and records what is sent. Every test runs with a sender
thread (plain sockets) and with the receiver sending too (TLS, rule 5).
"""

from __future__ import annotations

import dataclasses
import queue
import select
import struct
import threading
from typing import Any

import pytest

from ovirt_imageio.backends.base import Capabilities
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.nbd import handshake, wire
from ovirt_imageio.nbdd import buffers, transmit
from ovirt_imageio.transfer.tickets import Ticket

from support import nbd_messages

SIZE = 1024**2
WAIT = 10.0
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")


def request(type_: int, handle: int, offset: int = 0, length: int = 0,
            data: bytes = b"") -> bytes:
    return _REQUEST.pack(wire.REQUEST_MAGIC, 0, type_, handle, offset,
                         length) + data


class ScriptedStream:
    """Serves ``script``, then EOF; sets ``marks[n]`` once the receiver
    has read past byte ``n``, and ``eof`` when it reads at the end; a
    read starting at byte ``n`` of ``gates`` waits until ``gates[n]``
    bytes were sent."""

    def __init__(self, script: bytes, marks: dict[int, threading.Event],
                 gates: dict[int, int] | None = None) -> None:
        self._script = memoryview(script)
        self._pos = 0
        self._marks = marks
        self._gates = gates or {}
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._sent_more = threading.Condition(self._lock)
        # Set when the receiver reads past the end: every request before
        # was queued.
        self.eof = threading.Event()

    def recv_into(self, buf: memoryview) -> int:
        return self.recv_full(buf[:1])

    def recv_full(self, buf: memoryview) -> int:
        gate = self._gates.get(self._pos)
        if gate is not None:
            with self._lock:
                assert self._sent_more.wait_for(
                    lambda: len(self.sent) >= gate, WAIT)
        n = min(len(buf), len(self._script) - self._pos)
        if n == 0:
            self.eof.set()
        buf[:n] = self._script[self._pos:self._pos + n]
        self._pos += n
        for mark, event in self._marks.items():
            if self._pos >= mark:
                event.set()
        return n

    def sendall(self, data: Any) -> None:
        with self._lock:
            self.sent += bytes(data)
            self._sent_more.notify_all()

    def send_some(self, data: Any) -> int:
        self.sendall(data)
        return len(memoryview(data).cast("B"))

    def settimeout(self, timeout: float | None) -> None:
        pass

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        if not read:
            readable, _, _ = select.select([wake], [], [], 0 if write
                                           else WAIT)
            return False, write
        return self.wait_readable(wake), False

    def readable_now(self) -> bool:
        gate = self._gates.get(self._pos)
        with self._lock:
            return gate is None or len(self.sent) >= gate

    def wait_readable(self, wake: int) -> bool:
        # Readable unless a gate holds the next read: then only the wake
        # descriptor can end the wait.
        gate = self._gates.get(self._pos)
        with self._lock:
            if gate is None or len(self.sent) >= gate:
                return True
        readable, _, _ = select.select([wake], [], [], WAIT)
        assert readable, "Not woken while the gate holds"
        return False

    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["sender", "one-io-thread"])
def one_io_thread(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class Recording(MemoryBackend):
    """A concurrent memory backend logging calls; hooks may block a
    write to shape the order."""

    def __init__(self) -> None:
        super().__init__(bytearray(SIZE))
        self._capabilities = dataclasses.replace(
            super().capabilities, concurrent=True)
        self.log: list[tuple[str, int]] = []
        self.hooks: dict[int, Any] = {}
        self.flush_started = threading.Event()
        self._log_lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def _record(self, what: str, offset: int) -> None:
        with self._log_lock:
            self.log.append((what, offset))

    def readinto(self, offset: int, buf: memoryview) -> int:
        hook = self.hooks.get(offset)
        if hook is not None:
            hook()
        return super().readinto(offset, buf)

    def write(self, offset: int, buf: memoryview) -> None:
        self._record("start", offset)
        hook = self.hooks.get(offset)
        if hook is not None:
            hook()
        super().write(offset, buf)
        self._record("end", offset)

    def flush(self) -> None:
        self.flush_started.set()
        self._record("flush", 0)
        super().flush()


def make_ticket() -> Ticket:
    return nbd_messages.write_ticket(SIZE)


def serve_raw(stream: ScriptedStream, backend: Recording,
              one_io_thread: bool, budget: int = 8 * 1024**2) -> None:
    """Run a transmission to the end."""
    ready = handshake.Ready(
        "test-ticket", handshake.Export(size=SIZE, readonly=False),
        structured=False, contexts={}, go=True)
    bufs = buffers.Buffers(budget)
    t = transmit.Transmission(stream, make_ticket(), backend, ready, bufs,
                              abort=lambda: None,
                              done=lambda *args: None,
                              one_io_thread=one_io_thread)
    try:
        t.run()
    finally:
        bufs.close()


def serve(stream: ScriptedStream, backend: Recording, one_io_thread: bool,
          budget: int = 8 * 1024**2) -> list[int]:
    """Run a transmission to the end; return the handles answered, in
    the order answered (all simple replies, checked for success)."""
    serve_raw(stream, backend, one_io_thread, budget)
    handles = []
    sent = bytes(stream.sent)
    for pos in range(0, len(sent), _SIMPLE.size):
        magic, error, handle = _SIMPLE.unpack_from(sent, pos)
        assert (magic, error) == (wire.SIMPLE_REPLY_MAGIC, 0)
        handles.append(handle)
    return handles


def test_writes_overlap_and_reply_in_completion_order(
        one_io_thread: bool) -> None:
    backend = Recording()
    second_started = threading.Event()
    # The first write finishes only once the second one has started:
    # served one at a time, it would wait in vain.
    backend.hooks[0] = lambda: second_started.wait(WAIT)
    backend.hooks[4096] = second_started.set
    stream = ScriptedStream(
        request(wire.CMD_WRITE, 1, 0, 4096, b"a" * 4096)
        + request(wire.CMD_WRITE, 2, 4096, 4096, b"b" * 4096), {})
    handles = serve(stream, backend, one_io_thread)
    assert second_started.is_set()
    assert handles == [2, 1]
    assert backend.log[:2] == [("start", 0), ("start", 4096)]
    data = backend.data
    assert data[:4096] == b"a" * 4096
    assert data[4096:8192] == b"b" * 4096


def test_flush_waits_for_the_writes_before_it(one_io_thread: bool) -> None:
    backend = Recording()
    first = request(wire.CMD_WRITE, 1, 0, 4096, b"a" * 4096)
    flush = request(wire.CMD_FLUSH, 2)
    flush_read = threading.Event()

    def slow_write() -> None:
        # Still writing when the flush arrives; a flush not waiting for
        # this write would start while it waits here.
        assert flush_read.wait(WAIT)
        backend.flush_started.wait(0.5)

    backend.hooks[0] = slow_write
    stream = ScriptedStream(
        first + flush + request(wire.CMD_WRITE, 3, 4096, 4096, b"c" * 4096),
        {len(first) + len(flush): flush_read})
    handles = serve(stream, backend, one_io_thread)
    assert sorted(handles) == [1, 2, 3]
    assert handles.index(1) < handles.index(2)
    assert backend.log.index(("end", 0)) < backend.log.index(("flush", 0))


def test_one_storage_thread_without_concurrent_backend(
        one_io_thread: bool) -> None:
    backend = Recording()
    backend._capabilities = dataclasses.replace(backend.capabilities,
                                                concurrent=False)
    stream = ScriptedStream(b"".join(
        request(wire.CMD_WRITE, h, h * 4096, 4096, bytes([h]) * 4096)
        for h in range(8)), {})
    handles = serve(stream, backend, one_io_thread)
    # In order, and never two writes at once.
    assert handles == list(range(8))
    assert backend.log == [(what, h * 4096) for h in range(8)
                           for what in ("start", "end")]


def storage_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if "/storage" in t.name}


def test_storage_threads_start_on_demand(one_io_thread: bool) -> None:
    # A client sending each request once the one before is answered
    # keeps one thread busy: no more start.
    backend = Recording()
    seen: list[set[str]] = []
    for h in range(3):
        backend.hooks[h * 4096] = lambda: seen.append(storage_threads())
    one = len(request(wire.CMD_WRITE, 0, 0, 4096, bytes(4096)))
    stream = ScriptedStream(
        b"".join(request(wire.CMD_WRITE, h, h * 4096, 4096, b"x" * 4096)
                 for h in range(3)),
        {}, gates={h * one: h * _SIMPLE.size for h in (1, 2)})
    handles = serve(stream, backend, one_io_thread)
    assert handles == [0, 1, 2]
    assert [len(names) for names in seen] == [1, 1, 1]


class Concurrency:
    """A backend hook: the first ``wait`` calls wait until every request
    was queued (so each thread the receiver would start has started),
    then until all of them run together (too few threads break the
    barrier); records the most calls at once and the threads that made
    them."""

    def __init__(self, wait: int, queued: threading.Event) -> None:
        self.together = threading.Barrier(wait, timeout=WAIT)
        self._queued = queued
        self._wait = wait
        self._lock = threading.Lock()
        self._calls = 0
        self._now = 0
        self.most = 0
        self.threads: set[str] = set()

    def __call__(self) -> None:
        with self._lock:
            first = self._calls < self._wait
            self._calls += 1
            self._now += 1
            self.most = max(self.most, self._now)
            self.threads.add(threading.current_thread().name)
        try:
            if first:
                assert self._queued.wait(WAIT)
                self.together.wait()
        finally:
            with self._lock:
                self._now -= 1


def test_storage_depth_writes_at_once_and_no_more(one_io_thread: bool) -> None:
    depth = transmit.STORAGE_DEPTH
    backend = Recording()
    count = 3 * depth
    stream = ScriptedStream(b"".join(
        request(wire.CMD_WRITE, h, h * 4096, 4096, bytes([h]) * 4096)
        for h in range(count)), {})
    calls = Concurrency(depth, stream.eof)
    for h in range(count):
        backend.hooks[h * 4096] = calls
    handles = serve(stream, backend, one_io_thread)
    assert sorted(handles) == list(range(count))
    assert not calls.together.broken
    assert calls.most == depth
    assert len(calls.threads) == depth
    assert backend.data[:count * 4096] == b"".join(
        bytes([h]) * 4096 for h in range(count))


def test_reads_start_fewer_threads(one_io_thread: bool) -> None:
    depth = transmit.READ_DEPTH
    assert depth < transmit.STORAGE_DEPTH
    backend = Recording()
    count = 3 * depth
    stream = ScriptedStream(b"".join(
        request(wire.CMD_READ, h, h * 4096, 4096) for h in range(count)),
        {})
    calls = Concurrency(depth, stream.eof)
    for h in range(count):
        backend.write(h * 4096, memoryview(bytes([h + 1]) * 4096))
        backend.hooks[h * 4096] = calls
    serve_reads(stream, backend, count, one_io_thread)
    assert not calls.together.broken
    assert calls.most == depth
    assert len(calls.threads) == depth


def serve_reads(stream: ScriptedStream, backend: Recording, count: int,
                one_io_thread: bool) -> None:
    """Run a transmission of ``count`` 4 KiB reads; check every reply
    (simple, successful, with the data read)."""
    serve_raw(stream, backend, one_io_thread)
    sent = bytes(stream.sent)
    size = _SIMPLE.size + 4096
    assert len(sent) == count * size
    seen = set()
    for pos in range(0, len(sent), size):
        magic, error, handle = _SIMPLE.unpack_from(sent, pos)
        assert (magic, error) == (wire.SIMPLE_REPLY_MAGIC, 0)
        offset = handle * 4096
        assert sent[pos + _SIMPLE.size:pos + size] == \
            backend.data[offset:offset + 4096]
        seen.add(handle)
    assert seen == set(range(count))


def test_spent_budget_waits_for_replies(one_io_thread: bool) -> None:
    # Two requests' buffers: the third write waits until a reply gives
    # one back. With one I/O thread nobody else sends, so the receiver
    # must send while it waits.
    budget = 2 * (buffers.HEADROOM + 4096)
    backend = Recording()
    count = 8
    stream = ScriptedStream(b"".join(
        request(wire.CMD_WRITE, h, h * 4096, 4096, bytes([h]) * 4096)
        for h in range(count)), {})
    served: list[list[int]] = []
    t = threading.Thread(target=lambda: served.append(
        serve(stream, backend, one_io_thread, budget)))
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "Deadlocked on the buffer budget"
    assert sorted(served[0]) == list(range(count))
    assert backend.data[:count * 4096] == b"".join(
        bytes([h]) * 4096 for h in range(count))


class LateReplies:
    """The send queue of a transmission, handing the receiver each reply
    just too late: when it finds the queue empty while a request is in
    storage, the storage thread is let finish and queue its reply
    before the receiver hears that the queue was empty, as if it had
    finished the instant after the receiver looked."""

    def __init__(self, t: transmit.Transmission) -> None:
        self._q: queue.SimpleQueue[Any] = t._send_q
        storage_q: queue.SimpleQueue[Any] = t._storage_q
        self._cond = threading.Condition()
        self._in_storage = 0
        self.late = 0
        late = self

        class Storage:
            def put(self, job: Any) -> None:
                with late._cond:
                    late._in_storage += job is not None
                storage_q.put(job)

            def get(self) -> Any:
                return storage_q.get()

        t._storage_q = Storage()  # type: ignore[assignment]
        t._send_q = self  # type: ignore[assignment]

    def put(self, job: Any) -> None:
        with self._cond:
            self._q.put(job)
            self._in_storage -= job is not None
            self._cond.notify_all()

    def get(self) -> Any:
        return self._q.get()

    def empty(self) -> bool:
        return self._q.empty()

    def get_nowait(self) -> Any:
        with self._cond:
            if self._q.empty() and self._in_storage:
                assert self._cond.wait_for(
                    lambda: not self._in_storage, WAIT)
                self.late += 1
                raise queue.Empty
        return self._q.get_nowait()


def test_reply_finished_as_the_receiver_goes_to_sleep_is_sent() -> None:
    # Rule 5: with one I/O thread, a client sending each request only
    # once the reply before it came gets every reply, also when each
    # finishes between the receiver's last look at the finished
    # requests and its wait (a lost wake-up fails ScriptedStream's
    # wait).
    backend = Recording()
    count = 50
    script = b""
    gates = {}
    for h in range(count):
        gates[len(script)] = h * _SIMPLE.size
        script += request(wire.CMD_WRITE, h, h * 512, 512, bytes([h]) * 512)
    stream = ScriptedStream(script, {}, gates)
    ready = handshake.Ready(
        "test-ticket", handshake.Export(size=SIZE, readonly=False),
        structured=False, contexts={}, go=True)
    bufs = buffers.Buffers(8 * 1024**2)
    t = transmit.Transmission(stream, make_ticket(), backend, ready, bufs,
                              abort=lambda: None, done=lambda *args: None,
                              one_io_thread=True)
    late = LateReplies(t)
    try:
        t.run()
    finally:
        bufs.close()
    assert late.late >= count - 1
    sent = bytes(stream.sent)
    assert [_SIMPLE.unpack_from(sent, pos)[2]
            for pos in range(0, len(sent), _SIMPLE.size)] == list(range(count))
    assert backend.data[:count * 512] == b"".join(
        bytes([h]) * 512 for h in range(count))
