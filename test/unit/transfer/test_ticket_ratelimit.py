# SPDX-License-Identifier: GPL-2.0-or-later
"""Tickets apply their rate limit to the data their operations move."""

from __future__ import annotations

import threading

import pytest

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops, streaming
from ovirt_imageio.transfer.ratelimit import RateLimiter
from ovirt_imageio.transfer.tickets import Ticket
from ovirt_imageio.transfer.ticketspec import parse

SIZE = 1000


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def wait(self, cond: threading.Condition, seconds: float) -> None:
        self.now += seconds


def ticket(rate: int) -> tuple[Ticket, FakeTime]:
    t = Ticket(parse({"uuid": "t-0123456789", "size": SIZE, "timeout": 60,
                      "url": "file:///x", "ops": ["read", "write"],
                      "rate_limit": rate}))
    fake = FakeTime()
    t.limiter = RateLimiter(rate, clock=fake.clock, wait=fake.wait)
    return t, fake


class Body:
    def readinto_full(self, buf: memoryview) -> None:
        buf[:] = b"x" * len(buf)


class Sink:
    def write(self, data: object) -> None:
        pass


def bufs() -> tuple[memoryview, memoryview]:
    return memoryview(bytearray(100)), memoryview(bytearray(100))


@pytest.mark.parametrize("make_op", [
    lambda b: ops.Write(b, Body(), 0, SIZE, bufs()),
    lambda b: ops.Read(b, Sink(), 0, SIZE, bufs()),
    # The NBD door's operations: one request, one buffer.
    lambda b: ops.ReadInto(b, 0, memoryview(bytearray(SIZE))),
    lambda b: ops.WriteFrom(b, 0, memoryview(bytearray(SIZE))),
], ids=["write", "read", "nbd-read", "nbd-write"])
def test_data_waits_for_the_rate(make_op: object) -> None:
    t, fake = ticket(rate=100)
    backend = MemoryBackend(bytearray(SIZE))
    t.run(make_op(backend))  # type: ignore[operator]
    # 1000 bytes at 100/s with a burst of 10: 9.9 s of waiting.
    assert fake.now == pytest.approx((SIZE - 100 * 0.1) / 100)


def test_zero_is_not_limited() -> None:
    t, fake = ticket(rate=1)
    t.run(ops.Zero(MemoryBackend(bytearray(SIZE)), 0, SIZE))
    assert fake.now == 0.0


def test_unlimited_ticket_never_waits() -> None:
    t, fake = ticket(rate=0)
    t.run(ops.Write(MemoryBackend(bytearray(SIZE)), Body(), 0, SIZE, bufs()))
    assert fake.now == 0.0


def test_cancel_ends_the_wait() -> None:
    t, fake = ticket(rate=1)
    backend = MemoryBackend(bytearray(SIZE))
    op = ops.Write(backend, Body(), 0, SIZE, bufs())
    waits = 0

    def wait(cond: threading.Condition, seconds: float) -> None:
        nonlocal waits
        waits += 1
        fake.now += seconds
        if waits == 5:
            t.cancel(0)

    t.limiter = RateLimiter(1, clock=fake.clock, wait=wait)
    with pytest.raises(Exception) as e:
        t.run(op)
    assert "canceled" in str(e.value)
    assert waits == 5


def test_every_connection_of_a_ticket_takes_from_one_bucket() -> None:
    # Four connections, each with its own backend and operation, running
    # at once: together they wait as one client moving all their bytes
    # (one burst), not as four clients with a burst each.
    t, fake = ticket(rate=100)
    parts = 4

    def connection(i: int) -> None:
        backend = MemoryBackend(bytearray(SIZE))
        t.run(ops.Write(backend, Body(), 0, SIZE, bufs()))

    threads = [threading.Thread(target=connection, args=(i,))
               for i in range(parts)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert fake.now == pytest.approx((parts * SIZE - 100 * 0.1) / 100)


def test_a_new_rate_reaches_an_operation_in_progress() -> None:
    t, fake = ticket(rate=100)
    waits = 0

    def wait(cond: threading.Condition, seconds: float) -> None:
        nonlocal waits
        waits += 1
        fake.now += seconds
        if waits == 5:
            # What PATCH /tickets/{id} does, in the middle of the first
            # chunk's wait.
            t.set_rate_limit(1000)

    t.limiter = RateLimiter(100, clock=fake.clock, wait=wait)
    t.run(ops.Write(MemoryBackend(bytearray(SIZE)), Body(), 0, SIZE, bufs()))
    # The first chunk (100 bytes, 10 of burst) owed 0.9 s at 100/s; after
    # 0.5 s the rest (40 bytes) took 0.04 s at 1000/s, and the other nine
    # chunks 0.1 s each: 1.44 s instead of 9.9 s.
    assert fake.now == pytest.approx(0.5 + 0.04 + 9 * 0.1)
    assert t.status()["rate_limit"] == 1000


class Stream:
    """A chunked body of SIZE bytes."""

    def __init__(self) -> None:
        self.left = SIZE

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self.left)
        buf[:n] = b"s" * n
        self.left -= n
        return n


def test_stream_write_waits_for_the_rate() -> None:
    t, fake = ticket(rate=100)
    backend = MemoryBackend(bytearray(SIZE))
    t.run(streaming.StreamWrite(backend, Stream(), 0, SIZE, bufs()))
    assert fake.now == pytest.approx((SIZE - 100 * 0.1) / 100)
