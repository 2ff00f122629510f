# SPDX-License-Identifier: GPL-2.0-or-later
"""
When and how often the http backend sends a failed request again.

Theory of operation
-------------------

A request is retried when its failure says nothing about the request
itself, only about the way to the server:

- the connection broke after it was made (reset, broken pipe, end of
  stream before the whole answer, a read or write timeout):
  ``ConnectionBroken``;
- the server answered 503 (Service Unavailable: busy, or a proxy whose
  host daemon is restarting), which asks the client to come back later;
- a new connection could not be made, but only on a retry: the first
  failure was one of the above, so the server is known to exist and is
  probably coming back (a proxy restarting). Failing to connect at first
  is final at once, so a wrong address fails fast and the client's proxy
  fallback is not delayed.

Any other answer (400, 403, 404, 416, 500, ...) is the server's verdict
on the request and is final, as are errors of our own.

A retry goes out on a new connection (the failed one is closed by
``http_connection``) after a delay growing exponentially: ``backoff``,
then twice that, and so on up to ``max_backoff`` (0.5 s, 1 s, 2 s with the
defaults), at most ``retries`` times per request. Each retry is logged as a
warning. When the retries are exhausted, the error that started them is
raised, with a note saying how many attempts failed and how the last one
ended.

Sending a request again is safe because every request the backend sends
is idempotent: a PUT writes the same bytes at the same offset, a zero or
flush has the same effect done twice, and GET, OPTIONS and extents change
nothing.

The sleep function is part of the policy, so tests run the whole loop
with recorded delays instead of waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, TypeVar

from .base import RemoteError
from .http_connection import ConnectionBroken, ConnectionFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

# Server answers that ask the client to try again later.
RETRY_STATUS = frozenset({503})


@dataclasses.dataclass(frozen=True)
class Retry:
    """
    The retry policy of a backend; immutable, shared by its clones.

    >>> policy = Retry(retries=4)
    >>> [policy.delay(n) for n in range(4)]
    [0.5, 1.0, 2.0, 4.0]
    >>> Retry(retries=0).call("GET", "server", lambda: 42)
    42
    """

    # How many times one request may be sent again; 0 disables retries.
    retries: int = 3
    # Delay before the first retry, in seconds; doubled for each next one.
    backoff: float = 0.5
    # Upper bound of one delay, so a large retries value does not mean
    # waiting for hours.
    max_backoff: float = 30.0
    # Waits between attempts; tests pass a recorder.
    sleep: Callable[[float], object] = time.sleep

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"Invalid retries: {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"Invalid backoff: {self.backoff}, "
                             f"{self.max_backoff}")

    def delay(self, n: int) -> float:
        """The delay before retry n (0 for the first retry)."""
        return float(min(self.backoff * 2**n, self.max_backoff))

    def retryable(self, error: BaseException, retrying: bool) -> bool:
        """
        Whether a request that failed with error may be sent again;
        retrying tells that an earlier attempt failed already.
        """
        if isinstance(error, ConnectionBroken):
            return True
        if isinstance(error, RemoteError):
            return error.status in RETRY_STATUS
        # Connecting failed: final unless the server was there before.
        return retrying and isinstance(error, ConnectionFailed)

    def call(self, what: str, where: str, attempt: Callable[[], T]) -> T:
        """
        Return attempt(), calling it again after a retryable failure, at
        most retries more times. attempt must start the request from the
        beginning on each call (a new connection, the whole body).
        """
        first: Exception | None = None
        n = 0
        while True:
            try:
                return attempt()
            except Exception as e:
                if n >= self.retries or not self.retryable(
                        e, retrying=first is not None):
                    if first is None:
                        raise
                    log.error("Giving up %s to %s after %d attempts: %s",
                              what, where, n + 1, e)
                    first.add_note(f"Gave up after {n + 1} attempts; the "
                                   f"last one failed with: {e}")
                    raise first from e
                if first is None:
                    first = e
                delay = self.delay(n)
                n += 1
                log.warning("%s to %s failed: %s; retry %d of %d in "
                            "%.1f s", what, where, e, n, self.retries, delay)
                self.sleep(delay)


# The backend's default: the daemon's proxy role fails at once and lets
# its own client decide.
NO_RETRY = Retry(retries=0)
