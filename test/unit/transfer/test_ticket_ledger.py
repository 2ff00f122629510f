# SPDX-License-Identifier: GPL-2.0-or-later
"""Tickets keep their ledger: what operations wrote, flushed, and saved."""

from __future__ import annotations

import os
import pathlib

import pytest

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops
from ovirt_imageio.transfer.ledger import LedgerFiles
from ovirt_imageio.transfer.store import TicketStore
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
