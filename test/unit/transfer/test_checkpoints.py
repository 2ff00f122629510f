# SPDX-License-Identifier: GPL-2.0-or-later
"""
Daemon checkpoints: a ticket's data written since the last flush reaching
its bound makes the daemon flush and save the ledger on its own.
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from ovirt_imageio.backends.base import Capabilities
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops
from ovirt_imageio.transfer.ledger import (
    MIN_CHECKPOINT,
    Ledger,
    LedgerFiles,
    checkpoint_bound,
)
from ovirt_imageio.transfer.store import TicketStore
from ovirt_imageio.transfer.tickets import Ticket
from ovirt_imageio.transfer.ticketspec import TicketSpec, parse

MiB = 1024**2
GiB = 1024**3
SIZE = 1000


def spec(ops_: list[str] | None = None, size: int = SIZE) -> TicketSpec:
    return parse({"uuid": "ticket-0123456789", "size": size,
                  "url": "file:///disk", "timeout": 60,
                  "ops": ops_ or ["read", "write"]})


class Body:
    def __init__(self, n: int) -> None:
        self._left = n

    def readinto_full(self, buf: memoryview) -> None:
        buf[:] = b"x" * len(buf)
        self._left -= len(buf)


class Unshared(MemoryBackend):
    """A backend whose flush covers only its own writes."""

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, shared_flush=False)


class FailingFlush(MemoryBackend):
    def flush(self) -> None:
        raise OSError(5, "fsync failed")


def bufs() -> tuple[memoryview, memoryview]:
    return memoryview(bytearray(64)), memoryview(bytearray(64))


def write(t: Ticket, backend: MemoryBackend, offset: int, n: int,
          flush: bool = False) -> None:
    t.run(ops.Write(backend, Body(n), offset, n, bufs(), flush=flush))


@pytest.mark.parametrize("option,size,bound", [
    # The option, when 1/32 of the image is larger.
    (64 * MiB, 16 * GiB, 64 * MiB),
    (64 * MiB, 2 * GiB, 64 * MiB),
    # 1/32 of the image, when smaller.
    (64 * MiB, GiB, 32 * MiB),
    # Never below MIN_CHECKPOINT for small images...
    (64 * MiB, 64 * MiB, MIN_CHECKPOINT),
    (64 * MiB, SIZE, MIN_CHECKPOINT),
    # ...unless the option itself is smaller.
    (MiB, GiB, MiB),
    # 0 disables.
    (0, GiB, 0),
])
def test_bound(option: int, size: int, bound: int) -> None:
    assert checkpoint_bound(option, size) == bound


@pytest.mark.parametrize("writes,bound,due", [
    ([], 100, False),
    ([99], 100, False),
    ([100], 100, True),
    ([50, 49], 100, False),
    ([50, 50], 100, True),
    ([10 * 1000], 100, True),
    # Rewriting a range counts again: it is data not yet flushed.
    ([60, 60], 100, True),
    # Bound 0: never.
    ([10**9], 0, False),
])
def test_due(writes: list[int], bound: int, due: bool) -> None:
    ledger = Ledger(10**10)
    for n in writes:
        # Overlapping ranges when the sizes repeat: all from 0.
        ledger.add(0, n, pending=True)
    assert ledger.checkpoint_due(bound) is due


def test_due_ignores_writes_not_pending() -> None:
    ledger = Ledger(1000)
    ledger.add(0, 500)
    assert not ledger.checkpoint_due(100)


def test_flush_resets_pending() -> None:
    ledger = Ledger(1000)
    ledger.add(0, 90, pending=True)
    ledger.flushed(ledger.flushing())
    ledger.add(100, 190, pending=True)
    assert not ledger.checkpoint_due(100)
    ledger.add(200, 210, pending=True)
    assert ledger.checkpoint_due(100)


def test_one_checkpoint_at_a_time() -> None:
    ledger = Ledger(1000)
    ledger.add(0, 100, pending=True)
    assert ledger.checkpoint_due(100)
    # Claimed: other writers do not start another one meanwhile.
    ledger.add(100, 300, pending=True)
    assert not ledger.checkpoint_due(100)
    ledger.checkpoint_done()
    assert ledger.checkpoint_due(100)


@pytest.mark.parametrize("requests,bound,flushes,durable", [
    # Below the bound: no flush, nothing durable.
    ([100, 100], 300, 0, []),
    # The request reaching the bound flushes, covering itself and all
    # before it.
    ([100, 100, 100], 300, 1, [(0, 300)]),
    # One flush per bound, not per request.
    ([100] * 9, 300, 3, [(0, 900)]),
    ([100] * 8, 300, 2, [(0, 600)]),
    # A request larger than the bound flushes in its middle, after the
    # 64-byte piece (bufs()) that reached the bound: a daemon killed
    # during a long request keeps what was written before that.
    ([500, 100], 300, 1, [(0, 320)]),
    ([700], 300, 2, [(0, 640)]),
    # Disabled.
    ([100] * 9, 0, 0, []),
])
def test_ticket_checkpoints(requests: list[int], bound: int, flushes: int,
                            durable: list[tuple[int, int]]) -> None:
    saved: list[Ticket] = []
    t = Ticket(spec(), checkpoint=bound, on_durable=saved.append)
    backend = MemoryBackend(bytearray(SIZE))
    pos = 0
    for n in requests:
        write(t, backend, pos, n)
        pos += n
    assert backend.flush_count == flushes
    assert t.ledger.durable().ranges() == durable
    # Every checkpoint saved the ledger.
    assert len(saved) == flushes
    assert not t.active


def test_long_write_enters_the_ledger_as_it_goes() -> None:
    t = Ticket(spec(), checkpoint=1000)
    backend = MemoryBackend(bytearray(SIZE))
    seen: list[int] = []

    class Watched(Body):
        def readinto_full(self, buf: memoryview) -> None:
            # What the ledger has when the next piece is received: all
            # the pieces storage accepted before it.
            seen.append(t.ledger.written())
            super().readinto_full(buf)

    t.run(ops.Write(backend, Watched(200), 0, 200, bufs()))
    assert seen == [0, 64, 128, 192]
    assert t.ledger.written() == 200


def test_zero_does_not_count() -> None:
    t = Ticket(spec(), checkpoint=100)
    backend = MemoryBackend(bytearray(SIZE))
    t.run(ops.Zero(backend, 0, 900))
    assert backend.flush_count == 0
    # But a checkpoint covers zeroed ranges too.
    write(t, backend, 900, 100)
    assert backend.flush_count == 1
    assert t.ledger.durable().ranges() == [(0, 1000)]


def test_write_with_flush_does_not_count() -> None:
    t = Ticket(spec(), checkpoint=300)
    backend = MemoryBackend(bytearray(SIZE))
    write(t, backend, 0, 200)
    write(t, backend, 200, 200, flush=True)
    assert backend.flush_count == 1
    write(t, backend, 400, 200)
    # 200 pending since the client's flush: no checkpoint yet.
    assert backend.flush_count == 1
    write(t, backend, 600, 100)
    assert backend.flush_count == 2
    assert t.ledger.durable().ranges() == [(0, 700)]


def test_client_flush_resets_the_count() -> None:
    t = Ticket(spec(), checkpoint=300)
    backend = MemoryBackend(bytearray(SIZE))
    write(t, backend, 0, 200)
    t.run(ops.Flush(backend))
    write(t, backend, 200, 200)
    assert backend.flush_count == 1


def test_no_checkpoint_without_shared_flush() -> None:
    t = Ticket(spec(), checkpoint=100)
    backend = Unshared(bytearray(SIZE))
    for i in range(5):
        write(t, backend, i * 100, 100)
    assert backend.flush_count == 0
    assert t.ledger.durable().ranges() == []


def test_failed_checkpoint_fails_the_request() -> None:
    t = Ticket(spec(), checkpoint=100)
    backend = FailingFlush(bytearray(SIZE))
    with pytest.raises(OSError, match="fsync failed"):
        write(t, backend, 0, 100)
    # Written, not durable; and the next bound tries again.
    assert t.ledger.written() == 100
    assert t.ledger.durable().ranges() == []
    assert not t.active
    with pytest.raises(OSError):
        write(t, backend, 100, 100)


def test_store_bounds(tmp_path: pathlib.Path) -> None:
    files = LedgerFiles(str(tmp_path))
    store = TicketStore(ledgers=files, checkpoint=64 * MiB)
    size = 16 * MiB
    t = store.add(spec(size=size))
    backend = MemoryBackend(bytearray(size))
    write(t, backend, 0, MIN_CHECKPOINT - 1)
    assert backend.flush_count == 0
    write(t, backend, MIN_CHECKPOINT - 1, 1)
    assert backend.flush_count == 1
    # Saved: a new store restores the checkpointed ranges.
    again = TicketStore(ledgers=files).add(spec(size=size))
    assert again.ledger.durable().ranges() == [(0, MIN_CHECKPOINT)]


def test_store_without_files_never_checkpoints() -> None:
    store = TicketStore(checkpoint=100)
    t = store.add(spec())
    backend = MemoryBackend(bytearray(SIZE))
    write(t, backend, 0, SIZE)
    assert backend.flush_count == 0


def test_read_only_ticket_has_no_bound(tmp_path: pathlib.Path) -> None:
    store = TicketStore(ledgers=LedgerFiles(str(tmp_path)), checkpoint=100)
    assert store.add(spec(["read"])).checkpoint == 0
    assert store.add(spec(["write"])).checkpoint == 100
