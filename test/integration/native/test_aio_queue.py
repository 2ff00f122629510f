# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ``ioutil.AioQueue`` (ext/aio.c) and the file backend's queue
built on it (``backends.file_queue``), on files in pytest's tmp_path
(ext4 on the development machines, which enforces O_DIRECT alignment).
"""

from __future__ import annotations

import errno
import os
import random
import select
from typing import Any, Iterator

import pytest

from ovirt_imageio.backends import file
from ovirt_imageio.native import ioutil

KiB = 1024
MiB = 1024**2


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def direct_fd(tmp_path: Any) -> Iterator[int]:
    path = tmp_path / "image"
    with open(path, "wb") as f:
        f.truncate(MiB)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    yield fd
    os.close(fd)


def reap_all(q: Any, count: int) -> list[tuple[int, Any]]:
    """Kick q, and wait on its descriptor until count requests came
    back."""
    q.kick()
    got: list[tuple[int, Any]] = []
    while len(got) < count:
        readable, _, _ = select.select([q], [], [], 10)
        assert readable, "No completion within 10 seconds"
        got += q.reap() if hasattr(q, "reap") else q.completed()
    return got


def test_writes_and_reads_complete_by_tag(direct_fd: int) -> None:
    q = ioutil.AioQueue(8)
    data = random_bytes(MiB)
    buf = ioutil.aligned_buffer(MiB)
    buf[:] = data
    view = memoryview(buf)
    try:
        for i in range(4):
            q.submit(direct_fd, True, view[i * 256 * KiB:(i + 1) * 256 * KiB],
                     i * 256 * KiB, tag=10 + i)
        assert sorted(reap_all(q, 4)) == [(10 + i, 256 * KiB)
                                          for i in range(4)]
        back = ioutil.aligned_buffer(MiB)
        q.submit(direct_fd, False, memoryview(back), 0, tag=99)
        assert reap_all(q, 1) == [(99, MiB)]
        assert bytes(back) == data
        # Nothing more to collect, without waiting.
        assert q.reap() == []
    finally:
        q.close()


def test_requests_wait_for_a_kick(direct_fd: int) -> None:
    q = ioutil.AioQueue(8)
    buf = memoryview(ioutil.aligned_buffer(8192))
    try:
        q.submit(direct_fd, False, buf[:4096], 0, tag=1)
        q.submit(direct_fd, False, buf[4096:], 4096, tag=2)
        # Queued, not started: nothing can finish, however long we wait.
        assert select.select([q], [], [], 0.1)[0] == []
        assert q.reap() == []
        assert sorted(reap_all(q, 2)) == [(1, 4096), (2, 4096)]
    finally:
        q.close()


def test_refused_at_submission_fails_in_its_result(direct_fd: int) -> None:
    q = ioutil.AioQueue(4)
    buf = memoryview(ioutil.aligned_buffer(8192))
    bad = os.open("/dev/null", os.O_RDONLY)
    os.close(bad)
    try:
        # The kernel refuses the second of the batch (a closed
        # descriptor): it comes back as a result, the others run.
        q.submit(direct_fd, False, buf[:4096], 0, tag=1)
        q.submit(bad, False, buf[4096:], 0, tag=2)
        q.submit(direct_fd, False, buf[4096:], 4096, tag=3)
        assert sorted(reap_all(q, 3)) == [
            (1, 4096), (2, -errno.EBADF), (3, 4096)]
        # And its place in the queue is free again.
        for tag in range(4, 8):
            q.submit(direct_fd, False, buf[:4096], 0, tag=tag)
        assert len(reap_all(q, 4)) == 4
    finally:
        q.close()


def test_close_drops_queued_requests(direct_fd: int) -> None:
    q = ioutil.AioQueue(4)
    data = b"\0" * 4096
    buf = ioutil.aligned_buffer(4096)
    buf[:] = b"x" * 4096
    q.submit(direct_fd, True, memoryview(buf), 0, tag=1)
    # Never kicked: never written.
    q.close()
    back = ioutil.aligned_buffer(4096)
    assert ioutil.pread_full(direct_fd, back, 0) == 4096
    assert bytes(back) == data


def test_full_queue_refuses(direct_fd: int) -> None:
    q = ioutil.AioQueue(2)
    buf = memoryview(ioutil.aligned_buffer(64 * KiB))
    try:
        q.submit(direct_fd, False, buf[:4096], 0, tag=1)
        q.submit(direct_fd, False, buf[4096:8192], 4096, tag=2)
        with pytest.raises(BlockingIOError):
            q.submit(direct_fd, False, buf[8192:12288], 8192, tag=3)
        assert sorted(t for t, _ in reap_all(q, 2)) == [1, 2]
        # Room again once collected.
        q.submit(direct_fd, False, buf[8192:12288], 8192, tag=3)
        assert reap_all(q, 1) == [(3, 4096)]
    finally:
        q.close()


def test_unaligned_request_fails_in_its_result(direct_fd: int) -> None:
    q = ioutil.AioQueue(2)
    buf = memoryview(ioutil.aligned_buffer(8192))
    try:
        q.submit(direct_fd, True, buf[1:513], 1, tag=7)
        assert reap_all(q, 1) == [(7, -errno.EINVAL)]
    finally:
        q.close()


def test_close_waits_for_requests_in_flight(direct_fd: int) -> None:
    q = ioutil.AioQueue(16)
    data = random_bytes(MiB, seed=3)
    buf = ioutil.aligned_buffer(MiB)
    buf[:] = data
    view = memoryview(buf)
    for i in range(16):
        q.submit(direct_fd, True, view[i * 64 * KiB:(i + 1) * 64 * KiB],
                 i * 64 * KiB, tag=i)
    q.kick()
    q.close()
    # Every write landed before close returned.
    back = ioutil.aligned_buffer(MiB)
    assert ioutil.pread_full(direct_fd, back, 0) == MiB
    assert bytes(back) == data


def test_closed_queue_is_kept_empty_for_reuse(direct_fd: int) -> None:
    q = ioutil.AioQueue(8)
    buf = ioutil.aligned_buffer(8192)
    buf[:] = b"x" * 8192
    view = memoryview(buf)
    # One request in flight and never reaped, one queued and never
    # kicked: the next user of the queue sees neither.
    q.submit(direct_fd, False, view[:4096], 0, tag=1)
    q.kick()
    q.submit(direct_fd, True, view[4096:], 4096, tag=2)
    handle = q._q
    q.close()
    again = ioutil.AioQueue(8)
    try:
        assert again._q == handle
        assert select.select([again], [], [], 0) == ([], [], [])
        assert again.reap() == []
        again.submit(direct_fd, False, view[4096:], 4096, tag=3)
        assert reap_all(again, 1) == [(3, 4096)]
        # The dropped write never ran.
        assert bytes(view[4096:]) == b"\0" * 4096
    finally:
        again.close()


def test_queues_kept_are_bounded() -> None:
    queues = [ioutil.AioQueue(4) for _ in range(ioutil._IDLE_MAX + 2)]
    for q in queues:
        q.close()
    assert sum(len(v) for v in ioutil._idle.values()) == ioutil._IDLE_MAX
    # A queue of another depth is a new one.
    other = ioutil.AioQueue(3)
    try:
        assert all(other._q != q for q, _ in ioutil._idle.get(4, []))
    finally:
        other.close()


def test_invalid_depth() -> None:
    with pytest.raises(ValueError):
        ioutil.AioQueue(0)


@pytest.fixture
def backend(tmp_path: Any) -> Iterator[file.FileBackend]:
    path = tmp_path / "disk"
    with open(path, "wb") as f:
        f.truncate(MiB)
    b = file.open(str(path), "r+")
    yield b
    b.close()


@pytest.mark.parametrize("offset,length,shift,why", [
    (1, 4096, 0, "unaligned offset"),
    (0, 100, 0, "unaligned length"),
    (0, 4096, 1, "unaligned buffer"),
    (MiB - 4096, 8192, 0, "past the end of the file"),
    (0, 0, 0, "empty"),
])
def test_file_queue_refuses(backend: file.FileBackend, offset: int,
                            length: int, shift: int, why: str) -> None:
    q = backend.io_queue(4)
    buf = memoryview(ioutil.aligned_buffer(16 * KiB))[shift:shift + length]
    try:
        assert not q.submit(True, offset, buf, 1), why
        assert not q.submit(False, offset, buf, 2), why
        assert q.completed() == []
    finally:
        q.close()


def test_file_queue_round_trip(backend: file.FileBackend) -> None:
    q = backend.io_queue(4)
    data = random_bytes(64 * KiB, seed=5)
    buf = ioutil.aligned_buffer(64 * KiB)
    buf[:] = data
    try:
        assert q.submit(True, 128 * KiB, memoryview(buf), 1)
        assert reap_all(q, 1) == [(1, True)]
        back = ioutil.aligned_buffer(64 * KiB)
        assert q.submit(False, 128 * KiB, memoryview(back), 2)
        assert reap_all(q, 1) == [(2, True)]
        assert bytes(back) == data
    finally:
        q.close()


def test_file_queue_sees_the_file_grow(backend: file.FileBackend) -> None:
    q = backend.io_queue(4)
    buf = memoryview(ioutil.aligned_buffer(4096))
    try:
        assert not q.submit(False, MiB, buf, 1)
        # Grown by another connection's write: the queue takes it now.
        backend.write(MiB, memoryview(b"x" * 4096))
        assert q.submit(False, MiB, buf, 2)
        assert reap_all(q, 1) == [(2, True)]
        assert bytes(buf) == b"x" * 4096
    finally:
        q.close()


def test_file_queue_read_only(tmp_path: Any) -> None:
    path = tmp_path / "disk"
    with open(path, "wb") as f:
        f.truncate(MiB)
    with file.open(str(path), "r") as b:
        q = b.io_queue(4)
        buf = memoryview(ioutil.aligned_buffer(4096))
        try:
            assert not q.submit(True, 0, buf, 1)
            assert q.submit(False, 0, buf, 2)
            assert reap_all(q, 1) == [(2, True)]
        finally:
            q.close()
