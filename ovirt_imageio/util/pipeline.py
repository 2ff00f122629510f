# SPDX-License-Identifier: GPL-2.0-or-later
"""
The two-buffer pipeline: overlap the two halves of a copy, chunk by chunk.

A copy through memory alternates two kinds of I/O on each chunk, say
reading it from storage and sending it over the network. Done in turn,
the disk waits while the network works and the other way round. With two
buffers, one side works on chunk N in the caller's thread while an
executor's thread works on chunk N+1 (or N-1) in the other buffer; both
release the GIL (C extension, ssl), so the copy runs at the speed of the
slower side instead of the sum of both.

Two shapes, by which side runs in the background:

- ``read_ahead``: producing runs in the background. Task N+1 (reading a
  chunk from storage, say) runs while the caller uses the result of task
  N (sends it). The server's downloads and the client's streamed uploads.
- ``write_behind``: using runs in the background. The caller produces
  item N+1 (receives a chunk) while item N is used (written to storage).
  The server's uploads and the client's streamed downloads.

Rules, the same in both shapes:

- At most one job is in the background at a time, so at most two chunks
  are alive: the one in the caller's thread and the one in the
  background. Alternating between two buffers by chunk number is
  therefore safe.
- Results are used in order, and producing (and using) runs one chunk at
  a time: a task starts only after the one before it ended.
- Neither function returns, normally or by an exception, while a job
  still runs: its buffer must not be reused or released under it. The
  first failure is raised; a background failure found while unwinding
  from another one is dropped.
- Without an executor (``submit`` None) the same loop runs in the
  caller's thread with no overlap, so one buffer is enough.

The executor is injected as its ``submit`` method, so this module needs
no threads of its own and can be tested with any executor.

>>> from concurrent.futures import ThreadPoolExecutor
>>> sent = []
>>> with ThreadPoolExecutor(1) as ex:
...     read_ahead((lambda i=i: i * 10 for i in range(3)), sent.append,
...                ex.submit)
>>> sent
[0, 10, 20]
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """A job running in the background (a concurrent.futures.Future)."""

    def result(self) -> T_co: ...


class Submit(Protocol):
    """Start fn in the background (concurrent.futures.Executor.submit)."""

    def __call__(self, fn: Callable[[], T], /) -> Pending[T]: ...


def read_ahead(tasks: Iterable[Callable[[], T]], use: Callable[[T], object],
               submit: Submit | None) -> None:
    """
    Run each task in the background and use its result here, in order;
    task N+1 runs while the result of task N is used.

    tasks is iterated lazily in the caller's thread, once the task before
    has ended, so it may decide from that task's effect whether another
    one follows (and raise to stop).
    """
    if submit is None:
        for run in tasks:
            use(run())
        return

    it = iter(tasks)
    task: Callable[[], T] | None = next(it, None)
    if task is None:
        return
    pending: Pending[T] | None = submit(task)
    try:
        while pending is not None:
            value = pending.result()
            pending = None
            task = next(it, None)
            if task is not None:
                pending = submit(task)
            use(value)
    finally:
        if pending is not None:
            wait(pending)


def write_behind(items: Iterable[T], use: Callable[[T], object],
                 submit: Submit | None) -> None:
    """
    Use each item in the background, in order; item N+1 is produced (by
    iterating items, in the caller's thread) while item N is used.
    """
    if submit is None:
        for item in items:
            use(item)
        return

    pending: Pending[object] | None = None
    try:
        for item in items:
            if pending is not None:
                pending.result()
            pending = submit(functools.partial(use, item))
        if pending is not None:
            last, pending = pending, None
            last.result()
    finally:
        if pending is not None:
            wait(pending)


def wait(pending: Pending[Any]) -> None:
    """Wait for a job whose failure, if any, is not ours to report."""
    try:
        pending.result()
    except Exception:
        # Already reported, or superseded by the error being raised.
        pass
