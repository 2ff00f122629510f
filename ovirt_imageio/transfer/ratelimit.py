# SPDX-License-Identifier: GPL-2.0-or-later
"""
Per-ticket rate limits: bytes per second of data moved, by all
connections of a ticket and both directions together.

Theory of operation
-------------------

:class:`TokenBucket` is the pure rule, driven by the times its caller
gives it. Tokens are bytes; they accrue at ``rate`` per second up to a
burst of ``BURST`` seconds' worth. Taking ``n`` bytes subtracts them at
once, possibly into debt, and the taker waits until its own bytes are
paid, not those taken after it (:meth:`TokenBucket.wait_time` with the
position ``take`` returned). Several connections taking at once share
the debt, so together they move ``rate`` bytes per second, whatever
their number and chunk sizes, and leave in the order they took: when
every taker waited for the whole debt, 4 connections woke together,
received their chunks together, and the bucket overflowed its burst
meanwhile; a 1 GiB upload limited to 128 MiB/s took 9.1 s instead of 8
(bench/transfers.py).

A rate of 0 means unlimited: nothing waits. Changing the rate keeps the
current balance and applies the new rate from that moment, also to
callers already waiting: :class:`RateLimiter` waits in slices of at most
``SLICE`` seconds and asks the bucket again after each, so a change made
through the control API takes effect within a second even for a caller
waiting on a huge chunk at a tiny rate.

Zeroing moves no data and is never limited; callers simply do not take
tokens for it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

# Seconds of rate a quiet bucket may save up for a burst: enough to keep
# a pipeline of a few chunks busy, too little to break the average.
BURST = 0.1

# The longest sleep between two looks at the bucket.
SLICE = 0.1

# The highest rate accepted, bytes per second (1 PiB/s): far above any
# storage link, and below 2**53 so the bucket's float arithmetic stays
# exact to the byte. Larger values are refused rather than turned into a
# float overflow deep in the data path.
MAX_RATE = 2**50


class TokenBucket:
    """
    The limit as a pure rule; times are seconds of a monotonic clock.

    Example::

        >>> b = TokenBucket(rate=1000, now=0.0)
        >>> b.take(1100, now=0.0)      # 100 of burst, 1000 of debt
        1100
        >>> b.wait_time(now=0.0)
        1.0
        >>> b.wait_time(now=0.5)
        0.5
        >>> b.set_rate(2000, now=0.5)  # faster: the rest of the debt too
        >>> b.wait_time(now=0.5)
        0.25
    """

    def __init__(self, rate: int, now: float) -> None:
        _check_rate(rate)
        self.rate = rate
        self._tokens = rate * BURST
        self._stamp = now
        # Bytes ever taken: a taker's position is this count after its
        # take, and the bytes taken after it are this count minus it.
        self._taken = 0

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.rate * BURST,
                               self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def take(self, n: int, now: float) -> int:
        """Spend ``n`` bytes (into debt if need be); return the taker's
        position for ``wait_time``."""
        if self.rate == 0:
            return self._taken
        self._refill(now)
        self._tokens -= n
        self._taken += n
        return self._taken

    def wait_time(self, now: float, position: int | None = None) -> float:
        """
        Seconds until the debt is paid at the current rate: all of it, or
        up to ``position`` (what ``take`` returned), leaving the bytes
        taken after it to their takers.
        """
        if self.rate == 0:
            return 0.0
        self._refill(now)
        later = 0 if position is None else max(0, self._taken - position)
        # A debt below a thousandth of a byte is rounding, not debt: its
        # wait could be too small to move the clock at all.
        owed = -self._tokens - later
        if owed < 1e-3:
            return 0.0
        return owed / self.rate

    def delay(self, n: int, now: float) -> float:
        """Seconds a ``take(n)`` now would have to wait; nothing taken."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        owed = n - self._tokens
        return owed / self.rate if owed > 1e-3 else 0.0

    def set_rate(self, rate: int, now: float) -> None:
        """Change the rate from ``now`` on; 0 removes the limit."""
        _check_rate(rate)
        self._refill(now)
        if rate == 0:
            self._tokens = 0.0
        elif self.rate == 0:
            self._tokens = rate * BURST
        self.rate = rate
        self._tokens = min(self._tokens, rate * BURST)


class RateLimiter:
    """
    A :class:`TokenBucket` shared by threads, with waiting.

    ``clock`` defaults to the monotonic clock and ``wait(condition,
    seconds)`` to the condition's own wait; tests give a clock and a wait
    that advance together.
    """

    def __init__(self, rate: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Condition, float], object]
                 | None = None) -> None:
        self._clock = clock
        # Reentrant, so a test's fake wait may change the rate.
        self._lock = threading.RLock()
        self._bucket = TokenBucket(rate, clock())
        self._changed = threading.Condition(self._lock)
        self._wait = wait or (lambda cond, seconds: cond.wait(seconds))

    @property
    def rate(self) -> int:
        return self._bucket.rate

    def set_rate(self, rate: int) -> None:
        with self._lock:
            self._bucket.set_rate(rate, self._clock())
            # Waiters look again now rather than at the end of a slice.
            self._changed.notify_all()

    def delay(self, n: int) -> float:
        """Seconds an ``acquire(n)`` now would wait, taking nothing."""
        with self._lock:
            return self._bucket.delay(n, self._clock())

    def acquire(self, n: int,
                canceled: Callable[[], bool] = lambda: False) -> float:
        """
        Take ``n`` bytes and wait until the rate allows them; return the
        seconds waited. Returns early, without error, once ``canceled()``
        is true: the caller's own cancel check reports it.
        """
        waited = 0.0
        with self._lock:
            if self._bucket.rate == 0:
                return waited
            position = self._bucket.take(n, self._clock())
            while not canceled():
                delay = self._bucket.wait_time(self._clock(), position)
                if delay <= 0:
                    break
                start = self._clock()
                self._wait(self._changed, min(delay, SLICE))
                waited += self._clock() - start
        return waited


def _check_rate(rate: int) -> None:
    if type(rate) is not int or not 0 <= rate <= MAX_RATE:
        raise ValueError(f"Invalid rate limit {rate!r}: expecting bytes "
                         f"per second, an integer from 0 to {MAX_RATE}")
