# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ovirt_imageio.native.ioutil and the C extension behind it on
files, block devices, sockets and forks; what needs only memory is in
test/unit/native/test_ioutil_memory.py.

Files live in pytest's tmp_path, which on the development machines is
ext4 and enforces O_DIRECT alignment (unlike /dev/shm). Block device tests
use the loop devices from test/support/storage.py and skip without them.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.native import ioutil

from support import TOP, storage

KiB = 1024
MiB = 1024**2


# Helpers.

class Worker(threading.Thread):
    """Run func in a thread, keeping its result or exception."""

    def __init__(self, func: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._func = func
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._func()
        except BaseException as e:
            self.error = e

    def get(self) -> Any:
        self.join(timeout=30)
        assert not self.is_alive(), "worker did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def recv_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(1 * MiB)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def open_direct(path: Any, flags: int = os.O_RDWR) -> int:
    return os.open(path, flags | os.O_DIRECT | os.O_CREAT, 0o600)


@pytest.fixture
def direct_fd(tmp_path: Any) -> Iterator[int]:
    fd = open_direct(tmp_path / "file")
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def user_storage() -> Iterator[storage.Session]:
    yield from storage.session()


@pytest.fixture(params=[("block-512", 512), ("block-4k", 4096)],
                ids=["block-512", "block-4k"])
def loop_device(request: Any, user_storage: storage.Session
                ) -> Iterator[tuple[str, int]]:
    name, sector_size = request.param
    try:
        backend = user_storage.get(name)
    except storage.Unavailable as e:
        pytest.skip(str(e))
    with backend:
        yield backend.path, sector_size


# Buffers.

def test_aligned_buffer_not_inherited_by_children() -> None:
    """
    A forked child gets no copy of the buffer (MADV_DONTFORK), so a fork
    in another thread cannot make copy-on-write split a page under direct
    I/O in progress.
    """
    buf = ioutil.aligned_buffer(4 * MiB)
    try:
        start = ioutil.buffer_address(buf)
        ours = f"{start:x}-"
        pid = os.fork()
        if pid == 0:
            # Child: only look, then leave without running any cleanup.
            with open("/proc/self/maps") as f:
                mapped = any(line.startswith(ours) for line in f)
            os._exit(1 if mapped else 0)
        _, status = os.waitpid(pid, 0)
        with open("/proc/self/maps") as f:
            assert any(line.startswith(ours) for line in f)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        buf.close()


# pread_full and pwrite_full.

def test_pwrite_pread_direct(direct_fd: int) -> None:
    data = random_bytes(64 * KiB)
    buf = ioutil.aligned_buffer(64 * KiB)
    try:
        buf[:] = data
        ioutil.pwrite_full(direct_fd, buf, 4096)
        buf[:] = bytes(len(buf))
        assert ioutil.pread_full(direct_fd, buf, 4096) == 64 * KiB
        assert buf[:] == data
    finally:
        buf.close()


def test_pread_short_at_eof(tmp_path: Any) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 1000)
    fd = open_direct(path, os.O_RDONLY)
    buf = ioutil.aligned_buffer(8192)
    try:
        assert ioutil.pread_full(fd, buf, 0) == 1000
        assert buf[:1000] == b"x" * 1000
        # Past end of file: nothing, whatever the alignment.
        assert ioutil.pread_full(fd, buf, 8192) == 0
    finally:
        buf.close()
        os.close(fd)


def test_pread_pwrite_buffered_any_alignment(tmp_path: Any) -> None:
    path = tmp_path / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        ioutil.pwrite_full(fd, b"hello world", 3)
        buf = bytearray(20)
        assert ioutil.pread_full(fd, memoryview(buf)[1:], 3) == 11
        assert buf[1:12] == b"hello world"
        assert path.read_bytes() == b"\0\0\0hello world"
    finally:
        os.close(fd)


def test_pread_unaligned_direct_fails(direct_fd: int) -> None:
    # Recent kernels check alignment only where blocks are allocated;
    # reads of holes or past end of file succeed.
    os.write(direct_fd, ioutil.aligned_buffer(8192))
    # Not closed: the exception's traceback still refers to the slice.
    buf = ioutil.aligned_buffer(4096)
    with pytest.raises(OSError) as e:
        ioutil.pread_full(direct_fd, memoryview(buf)[:100], 0)
    assert e.value.errno == errno.EINVAL
    assert str(e.value).startswith("[Errno 22] pread: ")


@pytest.mark.parametrize("call, name", [
    (lambda fd: ioutil.pread_full(fd, bytearray(10), 0), "pread"),
    (lambda fd: ioutil.pwrite_full(fd, b"x", 0), "pwrite"),
    (lambda fd: ioutil.fallocate(fd, 0, 0, 4096), "fallocate"),
    (lambda fd: ioutil.scan_extents(fd, 0, 4096), "lseek"),
    (lambda fd: ioutil.blksszget(fd), "blksszget"),
    (lambda fd: ioutil.blkgetsize64(fd), "blkgetsize64"),
    (lambda fd: ioutil.blkzeroout(fd, 0, 4096), "blkzeroout"),
    (lambda fd: ioutil.recv_full(fd, bytearray(10), 1), "recv"),
    (lambda fd: ioutil.send_full(fd, b"x", 1), "send"),
])
def test_closed_fd_errors(tmp_path: Any, call: Callable[[int], Any],
                          name: str) -> None:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    with pytest.raises(OSError) as e:
        call(fd)
    assert e.value.errno == errno.EBADF
    assert e.value.strerror == f"{name}: {os.strerror(errno.EBADF)}"


def test_pread_needs_writable_buffer(direct_fd: int) -> None:
    with pytest.raises((TypeError, BufferError)):
        ioutil.pread_full(direct_fd, b"readonly", 0)


def test_pread_not_seekable() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as e:
            ioutil.pread_full(r, bytearray(10), 0)
        assert e.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


# fallocate.


def test_fallocate_allocate_and_punch(tmp_path: Any) -> None:
    path = tmp_path / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        ioutil.fallocate(fd, 0, 0, 1 * MiB)
        st = os.fstat(fd)
        assert st.st_size == 1 * MiB
        assert st.st_blocks * 512 >= 1 * MiB

        os.pwrite(fd, b"x" * 1 * MiB, 0)
        mode = ioutil.FALLOC_FL_PUNCH_HOLE | ioutil.FALLOC_FL_KEEP_SIZE
        ioutil.fallocate(fd, mode, 64 * KiB, 128 * KiB)
        assert os.fstat(fd).st_size == 1 * MiB
        assert ioutil.scan_extents(fd, 0, 1 * MiB) == [
            (0, 64 * KiB, True),
            (64 * KiB, 128 * KiB, False),
            (192 * KiB, 1 * MiB - 192 * KiB, True),
        ]
        assert os.pread(fd, 128 * KiB, 64 * KiB) == bytes(128 * KiB)
    finally:
        os.close(fd)


def test_fallocate_zero_range(tmp_path: Any) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 8192)
    fd = os.open(path, os.O_RDWR)
    try:
        ioutil.fallocate(fd, ioutil.FALLOC_FL_ZERO_RANGE, 4096, 8192)
    finally:
        os.close(fd)
    # Without KEEP_SIZE the file grows to the end of the range.
    assert path.read_bytes() == b"x" * 4096 + bytes(8192)


def test_fallocate_invalid_mode(tmp_path: Any) -> None:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    try:
        # PUNCH_HOLE requires KEEP_SIZE.
        with pytest.raises(OSError) as e:
            ioutil.fallocate(fd, ioutil.FALLOC_FL_PUNCH_HOLE, 0, 4096)
    finally:
        os.close(fd)
    assert e.value.errno in (errno.EOPNOTSUPP, errno.EINVAL)
    assert str(e.value.strerror).startswith("fallocate: ")


def test_dio_offset_align(direct_fd: int) -> None:
    align = ioutil.dio_offset_align(direct_fd)
    if align == 0:
        pytest.skip("kernel or file system does not report DIO alignment")
    # A power of two no larger than a page.
    assert align & (align - 1) == 0
    assert align <= 4096
    # The reported alignment really works.
    buf = ioutil.aligned_buffer(4096)
    try:
        with memoryview(buf) as view:
            ioutil.pwrite_full(direct_fd, view[:align], 0)
    finally:
        buf.close()


# Extents.

def make_sparse_file(path: Any, size: int,
                     data: list[tuple[int, int]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for start, length in data:
            f.seek(start)
            f.write(b"x" * length)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("size, data, start, end, expected", [
    # Empty range.
    (1 * MiB, [], 0, 0, []),
    # All hole.
    (1 * MiB, [], 0, 1 * MiB, [(0, 1 * MiB, False)]),
    # Data, hole, data, hole; the last extent ends at end.
    (4 * MiB, [(0, 64 * KiB), (1 * MiB, 64 * KiB)], 0, 4 * MiB, [
        (0, 64 * KiB, True),
        (64 * KiB, 1 * MiB - 64 * KiB, False),
        (1 * MiB, 64 * KiB, True),
        (1 * MiB + 64 * KiB, 3 * MiB - 64 * KiB, False),
    ]),
    # A sub range clips the extents at both ends.
    (4 * MiB, [(0, 64 * KiB), (1 * MiB, 64 * KiB)], 32 * KiB,
     1 * MiB + 32 * KiB, [
        (32 * KiB, 32 * KiB, True),
        (64 * KiB, 1 * MiB - 64 * KiB, False),
        (1 * MiB, 32 * KiB, True),
    ]),
    # Data up to an unaligned end of file.
    (100 * KiB + 100, [(96 * KiB, 4 * KiB + 100)], 0, 100 * KiB + 100, [
        (0, 96 * KiB, False),
        (96 * KiB, 4 * KiB + 100, True),
    ]),
    # Past end of file reads as a hole.
    (64 * KiB, [(0, 64 * KiB)], 0, 128 * KiB, [
        (0, 64 * KiB, True),
        (64 * KiB, 64 * KiB, False),
    ]),
    (64 * KiB, [(0, 64 * KiB)], 1 * MiB, 2 * MiB, [
        (1 * MiB, 1 * MiB, False),
    ]),
])
def test_scan_extents(tmp_path: Any, size: int, data: list[tuple[int, int]],
                      start: int, end: int,
                      expected: list[tuple[int, int, bool]]) -> None:
    path = tmp_path / "file"
    make_sparse_file(path, size, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ioutil.scan_extents(fd, start, end) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("batch", [1, 2, 3, ioutil.EXTENTS_BATCH])
def test_scan_extents_fragmented(tmp_path: Any, monkeypatch: Any,
                                 batch: int) -> None:
    # 1500 data blocks separated by holes: 3000 extents, more than one
    # default batch.
    count = 1500
    path = tmp_path / "file"
    make_sparse_file(path, count * 8 * KiB,
                     [(i * 8 * KiB, 4 * KiB) for i in range(count)])
    monkeypatch.setattr(ioutil, "EXTENTS_BATCH", batch)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = ioutil.scan_extents(fd, 0, count * 8 * KiB)
    finally:
        os.close(fd)
    expected = []
    for i in range(count):
        expected.append((i * 8 * KiB, 4 * KiB, True))
        expected.append((i * 8 * KiB + 4 * KiB, 4 * KiB, False))
    assert extents == expected


def test_iter_extents_is_lazy(tmp_path: Any) -> None:
    path = tmp_path / "file"
    make_sparse_file(path, 1 * MiB, [(0, 4096)])
    fd = os.open(path, os.O_RDONLY)
    it = ioutil.iter_extents(fd, 0, 1 * MiB)
    os.close(fd)
    # Nothing ran yet; the first step meets the closed descriptor.
    with pytest.raises(OSError) as e:
        next(it)
    assert e.value.errno == errno.EBADF


# Block device ioctls.

def test_blk_ioctls_on_regular_file(direct_fd: int) -> None:
    with pytest.raises(OSError) as e:
        ioutil.blksszget(direct_fd)
    assert e.value.errno == errno.ENOTTY
    assert str(e.value.strerror).startswith("blksszget: ")


def test_blksszget(loop_device: tuple[str, int]) -> None:
    path, sector_size = loop_device
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ioutil.blksszget(fd) == sector_size
        assert ioutil.blkgetsize64(fd) == storage.GiB
    finally:
        os.close(fd)


def test_blkzeroout(loop_device: tuple[str, int]) -> None:
    path, sector_size = loop_device
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = ioutil.aligned_buffer(1 * MiB)
    try:
        buf[:] = b"x" * len(buf)
        ioutil.pwrite_full(fd, buf, 0)
        ioutil.blkzeroout(fd, 64 * KiB, 128 * KiB)
        assert ioutil.pread_full(fd, buf, 0) == len(buf)
        expected = b"x" * 64 * KiB + bytes(128 * KiB) + b"x" * (832 * KiB)
        assert buf[:] == expected
        # The ioctls reject ranges not aligned to the sector size.
        with pytest.raises(OSError) as e:
            ioutil.blkzeroout(fd, sector_size // 2, sector_size)
        assert e.value.errno == errno.EINVAL
    finally:
        buf.close()
        os.close(fd)


def test_direct_io_4k_device_rejects_512(loop_device: tuple[str, int]
                                         ) -> None:
    path, sector_size = loop_device
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = ioutil.aligned_buffer(4096)
    try:
        if sector_size == 4096:
            with pytest.raises(OSError) as e:
                ioutil.pread_full(fd, memoryview(buf)[:512], 0)
            assert e.value.errno == errno.EINVAL
        else:
            assert ioutil.pread_full(fd, memoryview(buf)[:512], 0) == 512
    finally:
        os.close(fd)


# recv_full and send_full.

def test_recv_full_collects_pieces(sockets: tuple[socket.socket,
                                                  socket.socket]) -> None:
    a, b = sockets
    data = random_bytes(100 * KiB)
    buf = bytearray(len(data))
    worker = Worker(lambda: ioutil.recv_full(a.fileno(), buf, 10))
    for i in range(0, len(data), 1000):
        b.sendall(data[i:i + 1000])
    assert worker.get() == len(data)
    assert buf == data


@pytest.fixture
def tcp_sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: TCP honours SO_RCVLOWAT."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("size", [100, 300 * KiB, 3 * 1024 * KiB])
def test_recv_full_low_water_mark_never_exceeds_what_is_left(
        tcp_sockets: tuple[socket.socket, socket.socket], size: int) -> None:
    # The peer sends exactly the body in small pieces and then waits for
    # an answer; a low-water mark above what is left would block until
    # the timeout.
    a, b = tcp_sockets
    a.settimeout(30)
    data = random_bytes(size)
    buf = bytearray(size)
    worker = Worker(lambda: ioutil.recv_full(a.fileno(), buf, 20))
    for i in range(0, size, 7000):
        b.sendall(data[i:i + 7000])
    assert worker.get() == size
    assert buf == data
    # Restored for the next reader, which wants any byte.
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    b.sendall(b"x")
    assert a.recv(10) == b"x"


def test_recv_full_low_water_mark_and_early_close(
        tcp_sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = tcp_sockets
    buf = bytearray(MiB)
    worker = Worker(lambda: ioutil.recv_full(a.fileno(), buf, 20))
    b.sendall(b"y" * 1000)
    b.shutdown(socket.SHUT_WR)
    assert worker.get() == 1000
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


def test_recv_full_eof(sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    b.sendall(b"hello")
    b.shutdown(socket.SHUT_WR)
    buf = bytearray(10)
    assert ioutil.recv_full(a.fileno(), buf, 1) == 5
    assert buf[:5] == b"hello"
    # At end of stream, nothing more.
    assert ioutil.recv_full(a.fileno(), buf, 1) == 0


@pytest.mark.parametrize("sock_timeout", [None, 0.0, 5.0])
def test_recv_full_timeout(sockets: tuple[socket.socket, socket.socket],
                           sock_timeout: float | None) -> None:
    # Whatever mode Python put the socket in (blocking, non-blocking,
    # timeout), our timeout applies.
    a, b = sockets
    a.settimeout(sock_timeout)
    b.sendall(b"abc")
    with pytest.raises(TimeoutError) as e:
        ioutil.recv_full(a.fileno(), bytearray(10), 0.05)
    assert e.value.errno == errno.ETIMEDOUT
    assert str(e.value.strerror).startswith("recv: ")


def test_recv_full_nonblocking_without_timeout(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    # A Python socket with a timeout is O_NONBLOCK; without our timeout we
    # must wait (poll) instead of failing with EAGAIN.
    a, b = sockets
    a.settimeout(0.0)
    buf = bytearray(4)
    worker = Worker(lambda: ioutil.recv_full(a.fileno(), buf, None))
    b.sendall(b"ab")
    b.sendall(b"cd")
    assert worker.get() == 4
    assert buf == b"abcd"


def test_recv_full_zero_timeout_with_data(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    b.sendall(b"abcd")
    buf = bytearray(4)
    assert ioutil.recv_full(a.fileno(), buf, 0) == 4
    assert buf == b"abcd"


def test_recv_full_invalid_timeout(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(ValueError):
        ioutil.recv_full(sockets[0].fileno(), bytearray(1), -1)


# recv_some.

@pytest.mark.parametrize("sent,size,reads", [
    # What is there, without waiting for the buffer to fill.
    (b"abc", 10, [b"abc"]),
    # At most the buffer, the rest for the next call.
    (b"abcdef", 4, [b"abcd", b"ef"]),
])
def test_recv_some_returns_what_is_there(
        sockets: tuple[socket.socket, socket.socket], sent: bytes,
        size: int, reads: list[bytes]) -> None:
    a, b = sockets
    b.sendall(sent)
    for want in reads:
        buf = bytearray(size)
        n = ioutil.recv_some(a.fileno(), buf, 5)
        assert buf[:n] == want


@pytest.mark.parametrize("sock_timeout", [None, 0.0, 5.0])
def test_recv_some_waits_for_data(
        sockets: tuple[socket.socket, socket.socket],
        sock_timeout: float | None) -> None:
    # Blocking, non-blocking or with a timeout, the socket's mode does
    # not matter: nothing there means waiting, not EAGAIN.
    a, b = sockets
    a.settimeout(sock_timeout)
    buf = bytearray(10)
    worker = Worker(lambda: ioutil.recv_some(a.fileno(), buf, 10))
    b.sendall(b"late")
    assert worker.get() == 4
    assert buf[:4] == b"late"


def test_recv_some_eof(sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    b.shutdown(socket.SHUT_WR)
    assert ioutil.recv_some(a.fileno(), bytearray(10), 1) == 0


def test_recv_some_timeout(sockets: tuple[socket.socket, socket.socket]
                           ) -> None:
    a, _ = sockets
    with pytest.raises(TimeoutError) as e:
        ioutil.recv_some(a.fileno(), bytearray(10), 0.05)
    assert str(e.value.strerror).startswith("recv: ")


@pytest.mark.parametrize("sock_timeout", [None, 0.0, 5.0])
def test_send_full_large(sockets: tuple[socket.socket, socket.socket],
                         sock_timeout: float | None) -> None:
    a, b = sockets
    a.settimeout(sock_timeout)
    data = random_bytes(8 * MiB)
    worker = Worker(lambda: recv_all(b))
    ioutil.send_full(a.fileno(), data, 30)
    a.shutdown(socket.SHUT_WR)
    assert worker.get() == data


def test_send_full_timeout(sockets: tuple[socket.socket, socket.socket]
                           ) -> None:
    # Nobody reads: the socket buffer fills and the send times out.
    a, b = sockets
    with pytest.raises(TimeoutError) as e:
        ioutil.send_full(a.fileno(), bytes(8 * MiB), 0.05)
    assert str(e.value.strerror).startswith("send: ")


def test_send_full_closed_peer_no_sigpipe() -> None:
    # With SIGPIPE at its default action, a send without MSG_NOSIGNAL to a
    # closed peer kills the process; run it in a child.
    code = """
import errno, signal, socket
from ovirt_imageio.native import ioutil
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
a, b = socket.socketpair()
b.close()
try:
    ioutil.send_full(a.fileno(), b"x" * 1000, 1)
except BrokenPipeError as e:
    print(e.errno == errno.EPIPE, e.strerror)
"""
    repo = TOP
    p = subprocess.run([sys.executable, "-c", code], cwd=repo,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"child died: {p.returncode} {p.stderr}"
    assert p.stdout.strip() == f"True send: {os.strerror(errno.EPIPE)}"
    assert p.returncode != -signal.SIGPIPE
