# SPDX-License-Identifier: GPL-2.0-or-later
"""Rate limits: the token bucket's rule, and waiting on a fake clock."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer import ratelimit
from ovirt_imageio.transfer.ratelimit import RateLimiter, TokenBucket


@pytest.mark.parametrize("steps, expected", [
    # (operation, argument, time) -> wait_time after each step.
    ([("take", 100, 0.0)], [0.0]),                  # within the burst
    ([("take", 1100, 0.0)], [1.0]),
    ([("take", 1100, 0.0), ("wait", None, 0.6)], [1.0, 0.4]),
    ([("take", 1100, 0.0), ("wait", None, 5.0)], [1.0, 0.0]),
    # Quiet time saves up at most the burst.
    ([("wait", None, 100.0), ("take", 1100, 100.0)], [0.0, 1.0]),
    # Slower midway: the remaining debt at the new rate.
    ([("take", 1100, 0.0), ("rate", 500, 0.5)], [1.0, 1.0]),
    ([("take", 1100, 0.0), ("rate", 0, 0.5)], [1.0, 0.0]),
    # From unlimited to limited: a fresh burst, then the rate.
    ([("rate", 0, 0.0), ("take", 10**9, 0.0), ("rate", 1000, 1.0),
      ("take", 1100, 1.0)], [0.0, 0.0, 0.0, 1.0]),
])
def test_bucket(steps: list[tuple[str, int | None, float]],
                expected: list[float]) -> None:
    b = TokenBucket(1000, now=0.0)
    got = []
    for op, arg, now in steps:
        if op == "take":
            assert arg is not None
            b.take(arg, now)
        elif op == "rate":
            assert arg is not None
            b.set_rate(arg, now)
        got.append(round(b.wait_time(now), 9))
    assert got == expected


@given(st.integers(1, 10**9), st.lists(st.integers(0, 10**8), max_size=50))
def test_bucket_never_exceeds_rate(rate: int, sizes: list[int]) -> None:
    # Taking each size once the previous debt is paid moves at most the
    # burst plus rate * elapsed bytes.
    b = TokenBucket(rate, now=0.0)
    now = 0.0
    for n in sizes:
        now += b.wait_time(now)
        b.take(n, now)
    now += b.wait_time(now)
    assert sum(sizes) <= rate * (now + ratelimit.BURST) * (1 + 1e-9) + 1


@pytest.mark.parametrize("rate", [-1, 1.5, "10", True,
                                  ratelimit.MAX_RATE + 1, 10**400])
def test_invalid_rate(rate: object) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, now=0.0)  # type: ignore[arg-type]


class FakeTime:
    """A clock that moves only when the limiter waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, cond: threading.Condition, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_limiter_waits_in_slices() -> None:
    t = FakeTime()
    lim = RateLimiter(1000, clock=t.clock, wait=t.wait)
    assert lim.acquire(100) == 0.0
    waited = lim.acquire(1000)
    assert waited == pytest.approx(1.0)
    assert max(t.waits) <= ratelimit.SLICE


def test_limiter_unlimited_never_waits() -> None:
    t = FakeTime()
    lim = RateLimiter(0, clock=t.clock, wait=t.wait)
    assert lim.acquire(10**12) == 0.0
    assert t.waits == []


def test_limiter_rate_change_reaches_waiter() -> None:
    # The new rate applies at the next slice of a caller already waiting.
    t = FakeTime()

    def wait(cond: threading.Condition, seconds: float) -> None:
        t.wait(cond, seconds)
        if len(t.waits) == 2:
            # The control API speeds the ticket up after 0.2 s.
            lim.set_rate(10_000)

    lim = RateLimiter(1000, clock=t.clock, wait=wait)
    waited = lim.acquire(10_100)
    # 0.2 s at 1000/s paid 200 of 10000; the rest at 10000/s.
    assert waited == pytest.approx(0.2 + 9800 / 10_000)


def test_limiter_cancel_stops_waiting() -> None:
    t = FakeTime()
    lim = RateLimiter(1000, clock=t.clock, wait=t.wait)
    waited = lim.acquire(10**6, canceled=lambda: len(t.waits) >= 3)
    assert waited == pytest.approx(3 * ratelimit.SLICE)


def test_limiter_threads_share_the_rate() -> None:
    # Real threads and clock, tiny waits: two takers of 500 bytes at
    # 10000/s after the burst each wait for the shared debt.
    lim = RateLimiter(10_000)
    lim.acquire(1000)  # spend the burst
    waits: list[float] = []
    threads = [threading.Thread(target=lambda: waits.append(
        lim.acquire(500))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(waits) == 2 and max(waits) > 0


def test_delay_tells_the_wait_and_takes_nothing() -> None:
    b = TokenBucket(rate=1000, now=0.0)
    # 100 bytes of burst.
    assert b.delay(100, now=0.0) == 0.0
    assert b.delay(1100, now=0.0) == pytest.approx(1.0)
    b.take(1100, now=0.0)
    assert b.delay(0, now=0.5) == pytest.approx(0.5)
    assert b.wait_time(now=0.5) == pytest.approx(0.5)
    b.set_rate(0, now=0.5)
    assert b.delay(10**9, now=0.5) == 0.0


def test_limiter_delay() -> None:
    fake = FakeTime()
    lim = RateLimiter(1000, clock=fake.clock, wait=fake.wait)
    assert lim.delay(600) == pytest.approx(0.5)
    lim.acquire(600)
    assert fake.now == pytest.approx(0.5)


def test_takers_leave_in_the_order_they_took() -> None:
    # Four connections take 1000 bytes each at once (rate 1000/s, burst
    # 100): each waits for its own bytes, one second after the one before,
    # instead of all four waiting for the whole debt.
    b = TokenBucket(1000, now=0.0)
    positions = [b.take(1000, now=0.0) for _ in range(4)]
    assert [round(b.wait_time(0.0, p), 9) for p in positions] == \
        [0.9, 1.9, 2.9, 3.9]
    # The whole debt, for a caller with no position.
    assert round(b.wait_time(0.0), 9) == 3.9
    # A new rate applies to what each still owes.
    b.set_rate(2000, now=0.9)
    assert [round(b.wait_time(0.9, p), 9) for p in positions] == \
        [0.0, 0.5, 1.0, 1.5]


def test_limiter_first_taker_leaves_first() -> None:
    fake = FakeTime()
    lim = RateLimiter(1000, clock=fake.clock, wait=fake.wait)
    lim.acquire(100)  # the burst
    # Each acquire waits for its own bytes, at the rate.
    assert lim.acquire(1000) == pytest.approx(1.0)
    assert lim.acquire(500) == pytest.approx(0.5)
