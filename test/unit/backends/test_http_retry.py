# SPDX-License-Identifier: GPL-2.0-or-later
"""The http backend's retry policy: which failures retry, the delays."""

from __future__ import annotations

import logging
from typing import Callable

import pytest

from ovirt_imageio.backends.base import BackendError, RemoteError
from ovirt_imageio.backends.http_connection import (
    ConnectionBroken,
    ConnectionFailed,
)
from ovirt_imageio.backends.http_retry import NO_RETRY, Retry

BROKEN = ConnectionBroken("Connection reset by peer")
REFUSED = ConnectionFailed("Cannot connect: Connection refused")


@pytest.mark.parametrize("error,retrying,expected", [
    # The way to the server failed: worth another try.
    (BROKEN, False, True),
    (BROKEN, True, True),
    (ConnectionBroken("Timeout in GET request"), False, True),
    # The server asks to come back later.
    (RemoteError(503, "busy"), False, True),
    # Its verdict on the request: final.
    (RemoteError(400, "bad request"), False, False),
    (RemoteError(403, "no ticket"), False, False),
    (RemoteError(404, "no such context"), False, False),
    (RemoteError(416, "out of range"), True, False),
    (RemoteError(500, "internal error"), False, False),
    (RemoteError(502, "bad gateway"), False, False),
    # No server at first: final; gone after it was there: retried.
    (REFUSED, False, False),
    (REFUSED, True, True),
    # Our own errors are never retried.
    (BackendError("Invalid Content-Length"), True, False),
    (OSError(5, "Input/output error"), True, False),
    (ValueError("Invalid offset"), True, False),
])
def test_retryable(error: Exception, retrying: bool, expected: bool
                   ) -> None:
    assert Retry().retryable(error, retrying) is expected


@pytest.mark.parametrize("policy,delays", [
    (Retry(), [0.5, 1.0, 2.0]),
    (Retry(retries=6), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]),
    (Retry(retries=5, backoff=1, max_backoff=3), [1.0, 2.0, 3.0, 3.0, 3.0]),
    (Retry(retries=2, backoff=0), [0.0, 0.0]),
])
def test_delays(policy: Retry, delays: list[float]) -> None:
    assert [policy.delay(n) for n in range(policy.retries)] == delays


@pytest.mark.parametrize("kwargs", [
    {"retries": -1}, {"backoff": -0.5}, {"max_backoff": -1},
])
def test_invalid_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Retry(**kwargs)  # type: ignore[arg-type]


class Script:
    """An attempt failing with the given errors in turn, then succeeding."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def recorder() -> tuple[list[float], Callable[[float], None]]:
    slept: list[float] = []
    return slept, slept.append


@pytest.mark.parametrize("errors,attempts,slept", [
    # Success at once: no sleep.
    ((), 1, []),
    # Each failure waits twice as long as the one before.
    ((BROKEN,), 2, [0.5]),
    ((BROKEN, BROKEN, BROKEN), 4, [0.5, 1.0, 2.0]),
    ((RemoteError(503, "busy"), BROKEN), 3, [0.5, 1.0]),
    # A server restarting refuses connections for a while.
    ((BROKEN, REFUSED, REFUSED), 4, [0.5, 1.0, 2.0]),
])
def test_call_succeeds_after_retries(errors: tuple[Exception, ...],
                                     attempts: int, slept: list[float]
                                     ) -> None:
    delays, sleep = recorder()
    script = Script(*errors)
    assert Retry(sleep=sleep).call("PUT", "server", script) == "done"
    assert script.attempts == attempts
    assert delays == slept


@pytest.mark.parametrize("error", [
    RemoteError(403, "no ticket"),
    RemoteError(404, "not found"),
    REFUSED,
    BackendError("Invalid reply"),
])
def test_call_final_errors_are_not_retried(error: Exception) -> None:
    delays, sleep = recorder()
    script = Script(error)
    with pytest.raises(type(error)) as e:
        Retry(sleep=sleep).call("PUT", "server", script)
    assert e.value is error
    assert script.attempts == 1
    assert delays == []
    assert not getattr(e.value, "__notes__", None)


def test_call_exhausted_raises_first_error() -> None:
    delays, sleep = recorder()
    first = ConnectionBroken("Connection reset by peer")
    last = ConnectionBroken("Broken pipe")
    script = Script(first, BROKEN, last)
    with pytest.raises(ConnectionBroken) as e:
        Retry(retries=2, sleep=sleep).call("PUT", "server", script)
    assert e.value is first
    assert e.value.__notes__ == [
        "Gave up after 3 attempts; the last one failed with: Broken pipe"]
    assert script.attempts == 3
    assert delays == [0.5, 1.0]


def test_call_final_error_after_retry_ends_retrying() -> None:
    delays, sleep = recorder()
    broken = ConnectionBroken("Connection reset by peer")
    script = Script(broken, RemoteError(403, "ticket expired"))
    with pytest.raises(ConnectionBroken) as e:
        Retry(sleep=sleep).call("PUT", "server", script)
    # The error that started the retries, and what ended them.
    assert e.value is broken
    assert e.value.__notes__ == [
        "Gave up after 2 attempts; the last one failed with: "
        "403 ticket expired"]
    assert script.attempts == 2
    assert delays == [0.5]


def test_no_retry() -> None:
    script = Script(BROKEN)
    with pytest.raises(ConnectionBroken):
        NO_RETRY.call("GET", "server", script)
    assert script.attempts == 1


def test_call_logs_each_retry(caplog: pytest.LogCaptureFixture) -> None:
    delays, sleep = recorder()
    script = Script(ConnectionBroken("reset"), ConnectionBroken("eof"))
    with caplog.at_level(logging.WARNING,
                         logger="ovirt_imageio.backends.http_retry"):
        Retry(retries=3, sleep=sleep).call("PUT of 4096 bytes at 0",
                                           "http://host:54322", script)
    assert [r.getMessage() for r in caplog.records] == [
        "PUT of 4096 bytes at 0 to http://host:54322 failed: reset; "
        "retry 1 of 3 in 0.5 s",
        "PUT of 4096 bytes at 0 to http://host:54322 failed: eof; "
        "retry 2 of 3 in 1.0 s",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
