# SPDX-License-Identifier: GPL-2.0-or-later
"""
transfer.buffers under contention: the memory bound, waiting, fairness
between owners (tickets), leases given up between chunks, and the data
operations sharing one bounded pool from many threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

import pytest

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops
from ovirt_imageio.transfer.buffers import BufferPool
from ovirt_imageio.transfer.ratelimit import RateLimiter
from ovirt_imageio.transfer.tickets import Ticket
from ovirt_imageio.transfer.ticketspec import parse

KiB = 1024
PAIR = 2 * 4 * KiB


def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for a state another thread reaches (bounded, never a fixed
    delay)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


class Borrower(threading.Thread):
    """Borrows a pair for owner, records when it got it, and holds it
    until released."""

    def __init__(self, pool: BufferPool, owner: Hashable, order: list[str],
                 name: str, count: int = 1) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.owner = owner
        self.order = order
        self.label = name
        self.count = count
        self.got = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        with self.pool.borrow_many(4 * KiB, self.count, self.owner):
            self.order.append(self.label)
            self.got.set()
            self.release.wait(10)


def start_waiting(pool: BufferPool, b: Borrower) -> Borrower:
    waiting = pool.stats().waiting
    b.start()
    until(lambda: pool.stats().waiting == waiting + 1)
    return b


def test_borrower_waits_until_a_pair_comes_back() -> None:
    pool = BufferPool(limit=PAIR)
    order: list[str] = []
    with pool.borrow(4 * KiB, owner="a"):
        b = start_waiting(pool, Borrower(pool, "b", order, "b"))
        assert not b.got.is_set()
        assert pool.stats().lent == PAIR
    b.got.wait(10)
    assert order == ["b"]
    b.release.set()
    b.join(10)
    st = pool.stats()
    assert (st.lent, st.waiting, st.waits) == (0, 0, 1)
    assert st.peak == PAIR
    pool.close()


def test_a_new_owner_goes_before_more_of_an_old_one() -> None:
    pool = BufferPool(limit=PAIR)
    order: list[str] = []
    with pool.borrow(4 * KiB, owner="a"):
        waiters = [start_waiting(pool, Borrower(pool, "a", order, f"a{i}"))
                   for i in range(3)]
        waiters.append(start_waiting(pool, Borrower(pool, "b", order, "b")))
    # Each returns its pair once it has it, handing on to the next one.
    for w in waiters:
        w.release.set()
    for w in waiters:
        w.join(10)
    # b came last but a had just been served: b first, then a in order.
    assert order == ["b", "a0", "a1", "a2"]
    pool.close()


def test_the_owner_holding_less_goes_first() -> None:
    pool = BufferPool(limit=3 * PAIR)
    order: list[str] = []
    held = [Borrower(pool, "a", order, "held-a") for _ in range(2)]
    held.append(Borrower(pool, "b", order, "held-b"))
    for b in held:
        b.start()
        b.got.wait(10)
    a_more = start_waiting(pool, Borrower(pool, "a", order, "a"))
    b_more = start_waiting(pool, Borrower(pool, "b", order, "b"))
    # b's pair comes back: a holds two, b none, so b's later waiter goes
    # before a's.
    held[2].release.set()
    b_more.got.wait(10)
    assert order[-1] == "b"
    assert not a_more.got.is_set()
    held[0].release.set()
    a_more.got.wait(10)
    assert order[-1] == "a"
    for b in held + [a_more, b_more]:
        b.release.set()
        b.join(10)
    pool.close()


def test_several_pairs_come_together_and_are_not_overtaken() -> None:
    pool = BufferPool(limit=3 * PAIR)
    order: list[str] = []
    first = Borrower(pool, "a", order, "first", count=2)
    first.start()
    first.got.wait(10)
    big = start_waiting(pool, Borrower(pool, "b", order, "big", count=2))
    small = start_waiting(pool, Borrower(pool, "c", order, "small"))
    # One pair is free, but big came first and needs two: small waits
    # behind it rather than starving it.
    assert pool.stats().lent == 2 * PAIR
    assert order == ["first"]
    first.release.set()
    big.got.wait(10)
    small.got.wait(10)
    # Both fit once first is back, and are served together (the order
    # their threads record it in is the scheduler's).
    assert order[0] == "first"
    assert sorted(order[1:]) == ["big", "small"]
    assert pool.stats().lent == 3 * PAIR
    for b in (first, big, small):
        b.release.set()
        b.join(10)
    pool.close()


def test_a_borrower_larger_than_the_limit_is_served_alone() -> None:
    pool = BufferPool(limit=PAIR // 2)
    order: list[str] = []
    with pool.borrow(4 * KiB, owner="a") as (a, _):
        a[0] = 1
        b = start_waiting(pool, Borrower(pool, "b", order, "b"))
    b.got.wait(10)
    b.release.set()
    b.join(10)
    assert order == ["b"]
    pool.close()


def test_idle_pairs_make_room_instead_of_waiting() -> None:
    pool = BufferPool(limit=2 * PAIR)
    with pool.borrow(4 * KiB):
        pass
    with pool.borrow(8 * KiB) as (a, _):
        a[:3] = b"new"
        # The idle 4 KiB pair was unmapped to make room.
        st = pool.stats()
        assert (st.lent, st.idle, st.waits) == (2 * PAIR, 0, 0)
    assert pool.stats().peak <= 2 * PAIR
    pool.close()


def test_lease_is_contended_only_by_an_owner_holding_less() -> None:
    pool = BufferPool(limit=2 * PAIR)
    order: list[str] = []
    with pool.lease(4 * KiB, owner="a") as lease, \
            pool.borrow(4 * KiB, owner="a"):
        assert not lease.contended()
        # Another connection of the same ticket: no reason to give up.
        same = start_waiting(pool, Borrower(pool, "a", order, "a"))
        assert not lease.contended()
        other = start_waiting(pool, Borrower(pool, "b", order, "b"))
        assert lease.contended()
        old = lease.pair
        renewing = threading.Thread(target=lease.renew)
        renewing.start()
        other.got.wait(10)
        assert order == ["b"]
        # The lease waits in line behind a's earlier waiter.
        other.release.set()
        same.got.wait(10)
        same.release.set()
        renewing.join(10)
        assert not renewing.is_alive()
        assert order == ["b", "a"]
        assert len(lease.pair[0]) == len(old[0])
        assert lease.renewals == 1
    same.join(10)
    other.join(10)
    pool.close()


class Body:
    """A request body whose byte i is i % 251; before each chunk it runs
    gate()."""

    def __init__(self, gate: Callable[[], None]) -> None:
        self.pos = 0
        self.gate = gate

    def readinto_full(self, buf: memoryview) -> None:
        self.gate()
        for i in range(len(buf)):
            buf[i] = (self.pos + i) % 251
        self.pos += len(buf)


def test_concurrent_uploads_never_exceed_the_pool() -> None:
    # 4 connections for each of 8 tickets, 2 pairs between them all: the
    # pool never holds more, every upload completes, and the operations
    # handed their pairs over between chunks.
    uploads, size, chunk = 8, 16 * 4 * KiB, 4 * KiB
    pool = BufferPool(limit=2 * 2 * chunk)
    images = [bytearray(size) for _ in range(uploads)]
    backends = [MemoryBackend(image) for image in images]
    leases = []
    errors: list[BaseException] = []
    running = [uploads * 4]
    lock = threading.Lock()

    def gate() -> None:
        # Each chunk waits until someone waits for a pair (or too few
        # connections are left for that): the operations really overlap,
        # whatever the scheduler does.
        until(lambda: pool.stats().waiting > 0 or running[0] <= 2)

    def connection(ticket: int, part: int) -> None:
        try:
            quarter = size // 4
            with pool.lease(chunk, owner=ticket) as lease:
                leases.append(lease)
                ops.Write(backends[ticket], Body(gate), part * quarter,
                          quarter, lease).run()
        except BaseException as e:
            errors.append(e)
        finally:
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=connection, args=(t, p))
               for t in range(uploads) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    st = pool.stats()
    assert st.peak <= st.limit
    assert (st.lent, st.waiting) == (0, 0)
    assert st.waits > 0
    # Pairs changed hands between chunks, not only between requests.
    assert sum(lease.renewals for lease in leases) > 0
    quarter = bytes(i % 251 for i in range(size // 4))
    for image in images:
        assert image == quarter * 4
    pool.close()


def test_a_throttled_transfer_waits_for_its_rate_without_the_pair(
        ) -> None:
    # b holds one pair and waits for another; the upload holds the other
    # pair (level with b, so no contention) but its second chunk must wait
    # for the ticket's rate: it waits without the pair, which b gets.
    pool = BufferPool(limit=2 * PAIR)
    order: list[str] = []
    b_held = Borrower(pool, "b", order, "b-held")
    b_held.start()
    b_held.got.wait(10)
    chunk = 4 * KiB
    t = Ticket(parse({"uuid": "t-0123456789", "size": 3 * chunk,
                      "timeout": 60, "url": "file:///x", "ops": ["write"],
                      "rate_limit": 10 * chunk}))
    now = [0.0]
    seen: list[bool] = []
    b_more = Borrower(pool, "b", order, "b-more")

    def wait(cond: threading.Condition, seconds: float) -> None:
        if not seen:
            b_more.got.wait(10)
            seen.append(b_more.got.is_set())
            b_held.release.set()
            b_more.release.set()
        now[0] += seconds

    t.limiter = RateLimiter(10 * chunk, clock=lambda: now[0], wait=wait)
    image = bytearray(3 * chunk)
    with pool.lease(chunk, owner="t") as lease:
        start_waiting(pool, b_more)
        t.run(ops.Write(MemoryBackend(image), Body(lambda: None), 0,
                        3 * chunk, lease))
        assert lease.renewals >= 1
    assert seen == [True]
    assert image == bytes(i % 251 for i in range(3 * chunk))
    # Burst (one chunk), then two chunks at 10 per second.
    assert now[0] == pytest.approx(0.2)
    for b in (b_held, b_more):
        b.join(10)
    pool.close()
