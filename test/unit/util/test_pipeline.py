# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.util import pipeline

# Bound on waiting for an event that must happen; never reached when the
# code works.
WAIT = 10


class Recorder:
    """Tasks and uses that record where and in what order they ran."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, int]] = []
        self.threads: dict[tuple[str, int], str] = {}
        self.active = 0
        self.max_active = 0

    def record(self, what: str, i: int) -> None:
        with self.lock:
            self.events.append((what, i))
            self.threads[(what, i)] = threading.current_thread().name

    def task(self, i: int) -> int:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.record("task", i)
        with self.lock:
            self.active -= 1
        return i * 10

    def use(self, value: int) -> None:
        self.record("use", value)


def tasks(rec: Recorder, n: int) -> Iterator[Callable[[], int]]:
    return (functools.partial(rec.task, i) for i in range(n))


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="bg") as ex:
        yield ex


# read_ahead.

@given(n=st.integers(0, 20), threaded=st.booleans())
@settings(max_examples=50, deadline=None)
def test_read_ahead_uses_every_result_in_order(n: int,
                                               threaded: bool) -> None:
    rec = Recorder()
    used: list[int] = []
    with ThreadPoolExecutor(1) as ex:
        pipeline.read_ahead(tasks(rec, n), used.append,
                            ex.submit if threaded else None)
    assert used == [i * 10 for i in range(n)]
    assert [i for what, i in rec.events if what == "task"] == list(range(n))
    # One task at a time.
    assert rec.max_active <= 1


def test_read_ahead_threads(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    pipeline.read_ahead(tasks(rec, 3), rec.use, executor.submit)
    me = threading.current_thread().name
    for key, thread in rec.threads.items():
        if key[0] == "task":
            assert thread.startswith("bg")
        else:
            assert thread == me


def test_read_ahead_without_executor_does_not_overlap() -> None:
    rec = Recorder()
    pipeline.read_ahead(tasks(rec, 3), lambda v: rec.use(v // 10), None)
    assert rec.events == [("task", 0), ("use", 0), ("task", 1), ("use", 1),
                          ("task", 2), ("use", 2)]


def test_read_ahead_overlaps(executor: ThreadPoolExecutor) -> None:
    # Using result 0 waits for task 1 to start: only an overlapping
    # pipeline gets past it.
    started = [threading.Event() for _ in range(2)]

    def task(i: int) -> int:
        started[i].set()
        return i

    seen = []

    def use(i: int) -> None:
        if i == 0:
            assert started[1].wait(WAIT), "task 1 did not run during use 0"
        seen.append(i)

    pipeline.read_ahead((functools.partial(task, i) for i in range(2)), use,
                        executor.submit)
    assert seen == [0, 1]


def test_read_ahead_tasks_are_lazy(executor: ThreadPoolExecutor) -> None:
    # The next task is asked for only after the one before ended, so the
    # iterator can stop on what the tasks did.
    total = [0]

    def add() -> int:
        total[0] += 3
        return total[0]

    def more() -> Iterator[Callable[[], int]]:
        while total[0] < 10:
            yield add

    used: list[int] = []
    pipeline.read_ahead(more(), used.append, executor.submit)
    assert used == [3, 6, 9, 12]


def test_read_ahead_task_failure(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()

    def fail() -> int:
        raise OSError("read failed")

    def items() -> Iterator[Callable[[], int]]:
        yield functools.partial(rec.task, 0)
        yield fail
        yield functools.partial(rec.task, 2)

    used: list[int] = []
    with pytest.raises(OSError, match="read failed"):
        pipeline.read_ahead(items(), used.append, executor.submit)
    # Result 0 was used; nothing after the failure started.
    assert used == [0]
    assert ("task", 2) not in rec.events


def test_read_ahead_use_failure_waits_for_task(
        executor: ThreadPoolExecutor) -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> int:
        # Still running when use fails.
        release.wait(WAIT)
        finished.set()
        return 1

    def use(value: int) -> None:
        release.set()
        raise ConnectionResetError("peer gone")

    def items() -> Iterator[Callable[[], int]]:
        yield lambda: 0
        yield slow

    with pytest.raises(ConnectionResetError):
        pipeline.read_ahead(items(), use, executor.submit)
    assert finished.is_set()


def test_read_ahead_iterator_failure_waits_for_nothing(
        executor: ThreadPoolExecutor) -> None:
    def items() -> Iterator[Callable[[], int]]:
        yield lambda: 0
        raise RuntimeError("canceled")

    used: list[int] = []
    with pytest.raises(RuntimeError, match="canceled"):
        pipeline.read_ahead(items(), used.append, executor.submit)
    # Asking for the next task comes before using the current result.
    assert used == []


# write_behind.

@given(n=st.integers(0, 20), threaded=st.booleans())
@settings(max_examples=50, deadline=None)
def test_write_behind_uses_every_item_in_order(n: int,
                                               threaded: bool) -> None:
    used: list[int] = []
    with ThreadPoolExecutor(1) as ex:
        pipeline.write_behind(iter(range(n)), used.append,
                              ex.submit if threaded else None)
    assert used == list(range(n))


def test_write_behind_threads(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    pipeline.write_behind(iter(range(3)), rec.use, executor.submit)
    assert [i for _, i in rec.events] == [0, 1, 2]
    assert all(t.startswith("bg") for t in rec.threads.values())


def test_write_behind_overlaps(executor: ThreadPoolExecutor) -> None:
    # Using item 0 waits for item 1 to be produced.
    produced = threading.Event()

    def items() -> Iterator[int]:
        yield 0
        produced.set()
        yield 1

    seen = []

    def use(i: int) -> None:
        if i == 0:
            assert produced.wait(WAIT), "item 1 not produced during use 0"
        seen.append(i)

    pipeline.write_behind(items(), use, executor.submit)
    assert seen == [0, 1]


def test_write_behind_one_use_at_a_time(executor: ThreadPoolExecutor
                                        ) -> None:
    # Producing item N+2 waits for use N: at most two items alive.
    rec = Recorder()

    def items() -> Iterator[int]:
        for i in range(5):
            rec.record("produce", i)
            yield i

    pipeline.write_behind(items(), rec.use, executor.submit)
    events = rec.events
    for i in range(3):
        assert events.index(("use", i)) < events.index(("produce", i + 2))


@pytest.mark.parametrize("fail_at", [0, 2, 4])
def test_write_behind_use_failure(executor: ThreadPoolExecutor,
                                  fail_at: int) -> None:
    produced: list[int] = []
    used: list[int] = []

    def items() -> Iterator[int]:
        for i in range(5):
            produced.append(i)
            yield i

    def use(i: int) -> None:
        if i == fail_at:
            raise OSError("disk full")
        used.append(i)

    with pytest.raises(OSError, match="disk full"):
        pipeline.write_behind(items(), use, executor.submit)
    assert used == list(range(fail_at))
    # Found when producing the next item is done, before using it.
    assert produced == list(range(min(5, fail_at + 2)))


def test_write_behind_producer_failure_waits_for_use(
        executor: ThreadPoolExecutor) -> None:
    release = threading.Event()
    finished = threading.Event()

    def use(i: int) -> None:
        release.wait(WAIT)
        finished.set()

    def items() -> Iterator[int]:
        yield 0
        release.set()
        raise ConnectionResetError("client gone")

    with pytest.raises(ConnectionResetError):
        pipeline.write_behind(items(), use, executor.submit)
    assert finished.is_set()


def test_wait_drops_failures(executor: ThreadPoolExecutor) -> None:
    def fail() -> None:
        raise OSError("ignored")

    pipeline.wait(executor.submit(fail))
