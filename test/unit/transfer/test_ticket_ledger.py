# SPDX-License-Identifier: GPL-2.0-or-later
"""Tickets keep their ledger: what operations wrote, flushed, and saved."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading

import pytest

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops
from ovirt_imageio.transfer.errors import ShortData
from ovirt_imageio.transfer.ledger import LedgerFiles
from ovirt_imageio.transfer.store import TicketStore
from ovirt_imageio.transfer.streaming import StreamWrite
from ovirt_imageio.transfer.tickets import Ticket
from ovirt_imageio.transfer.ticketspec import TicketSpec, parse

SIZE = 1000


def spec(url: str = "file:///disk", size: int = SIZE,
         uuid: str = "ticket-0123456789") -> TicketSpec:
    return parse({"uuid": uuid, "size": size, "url": url, "timeout": 60,
                  "ops": ["read", "write"]})


class Body:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readinto_full(self, buf: memoryview) -> None:
        if len(buf) > len(self._data):
            raise ConnectionError("client gone")
        buf[:] = self._data[:len(buf)]
        self._data = self._data[len(buf):]


def bufs(n: int = 64) -> tuple[memoryview, memoryview]:
    return memoryview(bytearray(n)), memoryview(bytearray(n))


def write(t: Ticket, backend: MemoryBackend, offset: int, data: bytes,
          flush: bool = False) -> None:
    t.run(ops.Write(backend, Body(data), offset, len(data), bufs(),
                    flush=flush))


def written(t: Ticket) -> list[tuple[int, int, bool]]:
    return [(e.start, e.length, e.written) for e in t.ledger.extents()]


def test_writes_and_zeros_are_written() -> None:
    t = Ticket(spec())
    backend = MemoryBackend(bytearray(SIZE))
    write(t, backend, 100, b"x" * 100)
    t.run(ops.Zero(backend, 500, 100))
    assert written(t) == [(0, 100, False), (100, 100, True),
                          (200, 300, False), (500, 100, True),
                          (600, 400, False)]
    # Nothing flushed yet.
    assert t.ledger.durable().ranges() == []


def test_failed_write_is_not_written() -> None:
    t = Ticket(spec())
    backend = MemoryBackend(bytearray(SIZE))
    with pytest.raises(ConnectionError):
        t.run(ops.Write(backend, Body(b"x" * 10), 0, 100, bufs()))
    assert written(t) == [(0, SIZE, False)]


class CutBody:
    """A body cut after ``data``: the last fill gets what arrived, then
    ShortData, as the HTTP door's body does when its client is gone."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readinto_full(self, buf: memoryview) -> None:
        n = min(len(buf), len(self._data))
        buf[:n] = self._data[:n]
        self._data = self._data[n:]
        if n < len(buf):
            raise ShortData(len(buf), n)


class BlockBackend(MemoryBackend):
    """Memory with a storage block size, as O_DIRECT files have."""

    def __init__(self, data: bytearray, block_size: int) -> None:
        super().__init__(data)
        self._capabilities = dataclasses.replace(self._capabilities,
                                                 block_size=block_size)


@pytest.mark.parametrize("cut", [0, 1, 64, 150, 299])
def test_cut_write_records_written_prefix(cut: int) -> None:
    t = Ticket(spec())
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    op = ops.Write(backend, CutBody(b"c" * cut), 100, 300, bufs())
    with pytest.raises(ShortData):
        t.run(op)
    # Block size 1: every byte that arrived reached storage.
    assert op.done == cut
    assert image == bytes(100) + b"c" * cut + bytes(SIZE - 100 - cut)
    if cut:
        assert written(t) == [(0, 100, False), (100, cut, True),
                              (100 + cut, SIZE - 100 - cut, False)]
    else:
        assert written(t) == [(0, SIZE, False)]
    # Written, not durable: nothing flushed it.
    assert t.ledger.durable().ranges() == []


@pytest.mark.parametrize("cut,prefix", [
    (10, 0),     # in the unaligned head (100-112): no whole block
    (12, 12),    # the head exactly
    (40, 12 + 16),   # one whole block of the next buffer
    (12 + 64, 12 + 64),  # whole buffers only
    (12 + 64 + 31, 12 + 64 + 16),
])
def test_cut_write_keeps_whole_blocks_of_the_tail(cut: int,
                                                  prefix: int) -> None:
    t = Ticket(spec())
    image = bytearray(SIZE)
    backend = BlockBackend(image, 16)
    op = ops.Write(backend, CutBody(b"c" * cut), 100, 300, bufs())
    with pytest.raises(ShortData):
        t.run(op)
    assert op.done == prefix
    # A partial block would need read-modify-write: not written at all.
    assert image == bytes(100) + b"c" * prefix + bytes(SIZE - 100 - prefix)
    written_ranges = [(s, n) for s, n, w in written(t) if w]
    assert written_ranges == ([(100, prefix)] if prefix else [])


def test_cut_write_flush_not_durable() -> None:
    t = Ticket(spec())
    backend = MemoryBackend(bytearray(SIZE))
    with pytest.raises(ShortData):
        t.run(ops.Write(backend, CutBody(b"x" * 50), 0, 100, bufs(),
                        flush=True))
    assert [(s, n) for s, n, w in written(t) if w] == [(0, 50)]
    # The flush of the cut request never ran.
    assert t.ledger.durable().ranges() == []
    assert backend.flush_count == 0


def test_cut_stream_write_records_written_prefix() -> None:
    t = Ticket(spec())
    backend = MemoryBackend(bytearray(SIZE))

    class Cut:
        def __init__(self) -> None:
            self._left = 90

        def readinto(self, buf: memoryview) -> int:
            if not self._left:
                raise ConnectionResetError("client gone")
            n = min(len(buf), self._left, 20)
            buf[:n] = b"s" * n
            self._left -= n
            return n

    with pytest.raises(ConnectionResetError):
        t.run(StreamWrite(backend, Cut(), 10, SIZE - 10, bufs()))
    assert [(s, n) for s, n, w in written(t) if w] == [(10, 90)]


def test_flush_makes_earlier_writes_durable() -> None:
    saved: list[Ticket] = []
    t = Ticket(spec(), on_durable=saved.append)
    backend = MemoryBackend(bytearray(SIZE))
    write(t, backend, 0, b"a" * 10)
    write(t, backend, 50, b"b" * 10, flush=True)  # itself durable too
    assert t.ledger.durable().ranges() == [(0, 10), (50, 60)]
    write(t, backend, 80, b"c" * 10)
    assert t.ledger.durable().ranges() == [(0, 10), (50, 60)]
    t.run(ops.Flush(backend))
    assert t.ledger.durable().ranges() == [(0, 10), (50, 60), (80, 90)]
    assert saved == [t, t]


def test_reads_are_not_written() -> None:
    t = Ticket(spec())
    backend = MemoryBackend(bytearray(SIZE))

    class Sink:
        def write(self, data: object) -> None:
            pass

    t.run(ops.Read(backend, Sink(), 0, 100, bufs()))
    assert written(t) == [(0, SIZE, False)]


def store(tmp_path: pathlib.Path) -> TicketStore:
    return TicketStore(ledgers=LedgerFiles(str(tmp_path)))


def test_store_saves_and_restores(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path)
    t = s.add(spec())
    backend = MemoryBackend(bytearray(SIZE))
    write(t, backend, 0, b"a" * 100, flush=True)
    write(t, backend, 200, b"b" * 100)  # not flushed: lost on restart
    # A new daemon (a new store) with the same ticket.
    t2 = store(tmp_path).add(spec())
    assert written(t2) == [(0, 100, True), (100, 900, False)]
    # Another image under the same id starts empty.
    t3 = store(tmp_path).add(spec(url="file:///other"))
    assert written(t3) == [(0, SIZE, False)]
    t4 = store(tmp_path).add(spec(size=2000))
    assert written(t4) == [(0, 2000, False)]


def test_replacing_ticket_keeps_ledger(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path)
    t = s.add(spec())
    write(t, MemoryBackend(bytearray(SIZE)), 0, b"a" * 10)
    assert s.add(spec()).ledger is t.ledger


def test_remove_deletes_ledger(tmp_path: pathlib.Path) -> None:
    s = store(tmp_path)
    t = s.add(spec())
    write(t, MemoryBackend(bytearray(SIZE)), 0, b"a" * 10, flush=True)
    assert len(os.listdir(tmp_path)) == 1
    s.remove(t.uuid, timeout=1)
    assert os.listdir(tmp_path) == []
    assert written(store(tmp_path).add(spec())) == [(0, SIZE, False)]


def test_clear_saves_durable(tmp_path: pathlib.Path) -> None:
    s = TicketStore()
    t = s.add(spec())
    write(t, MemoryBackend(bytearray(SIZE)), 0, b"a" * 10, flush=True)
    # A store without files saves nothing and fails nothing.
    s.clear()
    s = store(tmp_path)
    t = s.add(spec())
    t.ledger.flushed(t.ledger.flushing())
    write(t, MemoryBackend(bytearray(SIZE)), 0, b"a" * 10)
    t.ledger.flushed(t.ledger.flushing())
    s.clear()
    assert written(store(tmp_path).add(spec())) == [
        (0, 10, True), (10, 990, False)]


def test_wait_writes_at_waits_for_the_write_at_start() -> None:
    t = Ticket(spec())
    backend = MemoryBackend(bytearray(SIZE))
    entered = threading.Event()
    release = threading.Event()

    class Held:
        """A body the test holds in the middle of the write, then cuts."""

        def __init__(self) -> None:
            self._calls = 0

        def readinto_full(self, buf: memoryview) -> None:
            self._calls += 1
            if self._calls == 1:
                buf[:] = b"h" * len(buf)
                return
            entered.set()
            release.wait(60)
            raise ShortData(len(buf), 0)

    def run() -> None:
        with pytest.raises(ShortData):
            t.run(ops.Write(backend, Held(), 200, 300, bufs()))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert entered.wait(60)
        # Other offsets do not wait; the write's own start does, until
        # it ends (here: no timeout left).
        assert t.wait_writes_at(0, 0)
        assert not t.wait_writes_at(200, 0)
        release.set()
        assert t.wait_writes_at(200, 60)
        # By then the cut write's prefix is in the ledger.
        assert [(s, n) for s, n, w in written(t) if w] == [(200, 64)]
    finally:
        release.set()
        thread.join()
