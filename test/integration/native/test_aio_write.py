# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ``ioutil.pwrite_direct``: direct writes through a Linux AIO
context of each thread (ext/aio.c), on files in pytest's tmp_path (ext4
on the development machines, which enforces O_DIRECT alignment).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.native import ioutil
from ovirt_imageio.native._ioutil import ffi

KiB = 1024
MiB = 1024**2


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def in_thread(func: Callable[[], Any]) -> Any:
    """Run func in a new thread (so it gets a context of its own)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(func())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def sparse_fd(tmp_path: Any) -> Iterator[int]:
    """An O_DIRECT descriptor of a 16 MiB file that is one hole."""
    path = tmp_path / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    os.ftruncate(fd, 16 * MiB)
    try:
        yield fd
    finally:
        os.close(fd)


def read_back(fd: int, offset: int, length: int) -> bytes:
    buf = ioutil.aligned_buffer(length)
    try:
        assert ioutil.pread_full(fd, buf, offset) == length
        return bytes(buf)
    finally:
        buf.close()


def test_writes_into_holes(sparse_fd: int) -> None:
    data = random_bytes(256 * KiB)
    buf = ioutil.aligned_buffer(len(data))
    try:
        buf[:] = data
        ioutil.pwrite_direct(sparse_fd, buf, 1 * MiB)
        ioutil.pwrite_direct(sparse_fd, memoryview(buf)[:4096], 8 * MiB)
    finally:
        buf.close()
    assert read_back(sparse_fd, 1 * MiB, len(data)) == data
    assert read_back(sparse_fd, 8 * MiB, 8192) == data[:4096] + bytes(4096)
    # The blocks were allocated where written, the rest stays a hole.
    assert ioutil.scan_extents(sparse_fd, 0, 2 * MiB) == [
        (0, 1 * MiB, False),
        (1 * MiB, 256 * KiB, True),
        (1 * MiB + 256 * KiB, 2 * MiB - (1 * MiB + 256 * KiB), False),
    ]
    assert os.fstat(sparse_fd).st_size == 16 * MiB


def test_extends_the_file(sparse_fd: int) -> None:
    buf = ioutil.aligned_buffer(64 * KiB)
    try:
        buf[:] = random_bytes(64 * KiB, seed=1)
        ioutil.pwrite_direct(sparse_fd, buf, 16 * MiB)
        assert os.fstat(sparse_fd).st_size == 16 * MiB + 64 * KiB
        assert read_back(sparse_fd, 16 * MiB, 64 * KiB) == bytes(buf)
    finally:
        buf.close()


def test_unaligned_fails_like_pwrite(sparse_fd: int) -> None:
    buf = ioutil.aligned_buffer(4096)
    # Not closed: the exception's traceback still refers to the slice.
    with pytest.raises(OSError) as e:
        ioutil.pwrite_direct(sparse_fd, memoryview(buf)[:100], 0)
    assert e.value.errno == errno.EINVAL
    assert e.value.strerror == f"pwrite: {os.strerror(errno.EINVAL)}"


@pytest.mark.parametrize("closed", [False, True],
                         ids=["read-only", "closed"])
def test_bad_descriptor(tmp_path: Any, closed: bool) -> None:
    path = tmp_path / "file"
    path.write_bytes(bytes(4096))
    fd = os.open(path, (os.O_RDWR if closed else os.O_RDONLY) | os.O_DIRECT)
    if closed:
        os.close(fd)
    buf = ioutil.aligned_buffer(4096)
    try:
        with pytest.raises(OSError) as e:
            ioutil.pwrite_direct(fd, buf, 0)
        assert e.value.errno == errno.EBADF
        assert e.value.strerror == f"pwrite: {os.strerror(errno.EBADF)}"
    finally:
        buf.close()
        if not closed:
            os.close(fd)


def test_threads_write_at_once(sparse_fd: int) -> None:
    # Eight threads filling distinct ranges of one hole together, each
    # with its own context, as the storage threads of connections do.
    piece = 128 * KiB
    count = 8
    errors: list[BaseException] = []

    def fill(i: int) -> None:
        buf = ioutil.aligned_buffer(piece)
        try:
            for j in range(count):
                buf[:] = random_bytes(piece, seed=i * count + j)
                ioutil.pwrite_direct(sparse_fd, buf, (j * 8 + i) * piece)
        except BaseException as e:
            errors.append(e)
        finally:
            buf.close()

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    whole = read_back(sparse_fd, 0, 8 * count * piece)
    for i in range(8):
        for j in range(count):
            start = (j * 8 + i) * piece
            assert whole[start:start + piece] == random_bytes(
                piece, seed=i * count + j)


def test_signals_during_writes(sparse_fd: int) -> None:
    # A signal handled while the thread waits for its completion
    # interrupts io_getevents; the write must still finish exactly once
    # and report success, never return before the kernel is done with
    # the buffer.
    received = []
    old = signal.signal(signal.SIGUSR1, lambda *a: received.append(1))
    data = random_bytes(4 * MiB, seed=2)
    done = threading.Event()

    def write() -> None:
        buf = ioutil.aligned_buffer(len(data))
        try:
            buf[:] = data
            for i in range(4):
                ioutil.pwrite_direct(sparse_fd, buf, i * len(data))
        finally:
            buf.close()
            done.set()

    try:
        t = threading.Thread(target=write)
        t.start()
        while not done.is_set():
            assert t.ident is not None
            signal.pthread_kill(t.ident, signal.SIGUSR1)
            done.wait(0.001)
        t.join(30)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert received
    assert read_back(sparse_fd, 0, 4 * len(data)) == data * 4


def test_thread_without_context_uses_pwrite(sparse_fd: int) -> None:
    # What a thread does when io_setup failed (fs.aio-max-nr reached):
    # its context is recorded as None and it writes with pwrite_full.
    data = random_bytes(64 * KiB, seed=3)

    def write() -> bool:
        ioutil._aio.context = None
        buf = ioutil.aligned_buffer(len(data))
        try:
            buf[:] = data
            ioutil.pwrite_direct(sparse_fd, buf, 0)
        finally:
            buf.close()
        return ioutil._aio.context is None

    assert in_thread(write)
    assert read_back(sparse_fd, 0, len(data)) == data


def test_each_thread_has_its_own_context(sparse_fd: int) -> None:
    # A thread waits for "one completion" of its context: were a context
    # shared, it could take another thread's and return early.
    both = threading.Barrier(2, timeout=30)
    handles: list[int] = []

    def write() -> None:
        buf = ioutil.aligned_buffer(4096)
        try:
            ioutil.pwrite_direct(sparse_fd, buf, 0)
            ioutil.pwrite_direct(sparse_fd, buf, 4096)
            handles.append(int(ffi.cast("uintptr_t", ioutil._aio.context)))
            # Both alive: neither handle can be the other's freed one.
            both.wait()
        finally:
            buf.close()

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(handles) == 2
    assert 0 not in handles
    assert handles[0] != handles[1]
