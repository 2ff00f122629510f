# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ovirt_imageio.backends.file.

"tmp" files live in pytest's tmp_path (ext4 on the development machines,
enforcing O_DIRECT alignment). The other storages come from
test/support/storage.py: file systems on 512 and 4096 byte sector loop devices
(ext2 cannot allocate with fallocate) and the loop devices themselves.
They are skipped, with the reason, when loop devices are unavailable.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import threading
import zlib
from typing import Any, Iterator, NamedTuple

import pytest

from ovirt_imageio.backends import base, file, file_zero
from ovirt_imageio.native import ioutil
from ovirt_imageio.util.extents import ZeroExtent

from support import storage

KiB = 1024
MiB = 1024**2


class Target(NamedTuple):
    name: str
    path: str
    # Logical block size, or None if unknown ("tmp" on an unknown disk).
    block_size: int | None
    block_device: bool


@pytest.fixture(scope="session")
def user_storage() -> Iterator[storage.Session]:
    yield from storage.session()


def _storage_target(request: Any, name: str) -> Iterator[Target]:
    session = request.getfixturevalue("user_storage")
    try:
        backend = session.get(name)
    except storage.Unavailable as e:
        pytest.skip(str(e))
    with backend:
        yield Target(name, backend.path, backend.sector_size,
                     name.startswith("block-"))


def _tmp_target(tmp_path: Any) -> Target:
    path = tmp_path / "image"
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    try:
        align = ioutil.dio_offset_align(fd) or None
    finally:
        os.close(fd)
    return Target("tmp", str(path), align, False)


FILE_STORAGES = ["file-512-ext4", "file-4k-ext4", "file-4k-xfs",
                 "file-512-ext2"]
BLOCK_STORAGES = ["block-512", "block-4k"]


@pytest.fixture(params=["tmp"] + FILE_STORAGES)
def file_target(request: Any, tmp_path: Any) -> Iterator[Target]:
    """An empty regular file."""
    if request.param == "tmp":
        yield _tmp_target(tmp_path)
    else:
        yield from _storage_target(request, request.param)


@pytest.fixture(params=BLOCK_STORAGES)
def block_target(request: Any) -> Iterator[Target]:
    """A zeroed loop device."""
    yield from _storage_target(request, request.param)


@pytest.fixture(params=["tmp"] + FILE_STORAGES + BLOCK_STORAGES)
def any_target(request: Any, tmp_path: Any) -> Iterator[Target]:
    if request.param == "tmp":
        yield _tmp_target(tmp_path)
    else:
        yield from _storage_target(request, request.param)


@pytest.fixture
def tmp_image(tmp_path: Any) -> str:
    path = tmp_path / "image"
    path.touch()
    return str(path)


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def read_all(backend: file.FileBackend, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    n = backend.readinto(offset, memoryview(buf))
    return bytes(buf[:n])


# Opening.

def test_open_missing(tmp_path: Any) -> None:
    path = tmp_path / "missing"
    with pytest.raises(FileNotFoundError):
        file.open(str(path), "r+")
    # Never creates.
    assert not path.exists()


@pytest.mark.parametrize("kind", ["directory", "fifo", "char-device"])
def test_open_unsupported_type(tmp_path: Any, kind: str) -> None:
    if kind == "directory":
        path = str(tmp_path)
    elif kind == "fifo":
        # Opening a FIFO for reading would block: must fail first.
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    else:
        path = "/dev/null"
    with pytest.raises(base.BackendError) as e:
        file.open(path, "r")
    assert "not a regular file or a block device" in str(e.value)


def test_open_invalid_arguments(tmp_image: str) -> None:
    with pytest.raises(ValueError):
        file.open(tmp_image, "w")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        file.open(tmp_image, "r", max_connections=0)


def test_open_read_only(tmp_image: str) -> None:
    write_file(tmp_image, b"x" * 4096)
    with file.open(tmp_image, "r") as backend:
        assert read_all(backend, 0, 4096) == b"x" * 4096
        with pytest.raises(PermissionError) as e:
            backend.write(0, memoryview(b"y"))
        assert e.value.errno == errno.EPERM
        with pytest.raises(PermissionError):
            backend.zero(0, 4096)
        backend.flush()
    assert read_file(tmp_image) == b"x" * 4096


def test_open_uses_direct_io(tmp_image: str) -> None:
    with file.open(tmp_image, "r+") as backend:
        flags = fcntl.fcntl(backend.fileno(), fcntl.F_GETFL)
    assert flags & os.O_DIRECT
    assert flags & os.O_ACCMODE == os.O_RDWR


# Block size.

def test_block_size_file(file_target: Target) -> None:
    # Empty: the kernel's word (statx), or 4096.
    with file.open(file_target.path, "r") as backend:
        bs = backend.capabilities.block_size
    assert bs == (file_target.block_size or 4096)

    # With data at offset 0 the answer stays the same.
    write_file(file_target.path, b"x" * 8192)
    with file.open(file_target.path, "r") as backend:
        assert backend.capabilities.block_size == bs


@pytest.mark.parametrize("content, expected", [
    # Allocated data at offset 0: the probe sees the real alignment.
    (b"x" * 8192, "sector"),
    (b"x" * 100, "sector"),
    # Nothing to read: reads succeed at any alignment, use the safe size.
    (b"", 4096),
])
def test_block_size_probe(file_target: Target, monkeypatch: Any,
                          content: bytes, expected: int | str) -> None:
    if file_target.block_size is None:
        pytest.skip("storage alignment unknown")
    # Force the read probe, as on kernels without STATX_DIOALIGN.
    monkeypatch.setattr(ioutil, "dio_offset_align", lambda fd: 0)
    write_file(file_target.path, content)
    with file.open(file_target.path, "r") as backend:
        bs = backend.capabilities.block_size
    if expected == "sector":
        assert bs == file_target.block_size
    else:
        assert bs == expected


def test_block_size_probe_leading_hole(tmp_image: str,
                                       monkeypatch: Any) -> None:
    # Recent kernels do not check alignment when reading a hole, so the
    # probe may fall back to 4096; it must never pick a size smaller than
    # the real one.
    with open(tmp_image, "wb") as f:
        f.truncate(1 * MiB)
    fd = os.open(tmp_image, os.O_RDONLY)
    try:
        real = ioutil.dio_offset_align(fd)
    finally:
        os.close(fd)
    monkeypatch.setattr(ioutil, "dio_offset_align", lambda fd: 0)
    with file.open(tmp_image, "r") as backend:
        bs = backend.capabilities.block_size
    assert bs in (512, 4096)
    assert bs >= real


def test_block_size_tmpfs() -> None:
    # tmpfs does not enforce alignment: use the safe size.
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = f"/dev/shm/imageio-test-{os.getpid()}"
    try:
        write_file(path, b"x" * 8192)
        try:
            backend = file.open(path, "r")
        except OSError as e:
            pytest.skip(f"no O_DIRECT on tmpfs: {e}")
        with backend:
            assert backend.capabilities.block_size == 4096
    finally:
        os.unlink(path)


def test_block_size_block_device(block_target: Target) -> None:
    with file.open(block_target.path, "r") as backend:
        assert backend.capabilities.block_size == block_target.block_size
        assert backend.block_device


# Capabilities and properties.

def test_capabilities_file(tmp_image: str) -> None:
    with file.open(tmp_image, "r+", sparse=True, max_connections=4) as b:
        assert b.name == "file"
        assert b.path == tmp_image
        assert b.sparse
        assert not b.block_device
        caps = b.capabilities
        assert caps.max_readers == 4
        assert caps.max_writers == 4
        assert caps.extents == frozenset({"zero"})
        # fsync covers every descriptor's writes.
        assert caps.shared_flush


def test_capabilities_block_device(block_target: Target) -> None:
    with file.open(block_target.path, "r+", max_connections=4) as b:
        caps = b.capabilities
        assert caps.max_readers == 4
        assert caps.max_writers == 4
        assert caps.block_size == block_target.block_size
        assert b.size() == storage.GiB


def test_close_idempotent(tmp_image: str) -> None:
    backend = file.open(tmp_image, "r+")
    backend.readinto(0, memoryview(bytearray(10)))
    backend.close()
    backend.close()
    assert backend.fileno() == -1
    with pytest.raises(OSError) as e:
        backend.readinto(0, memoryview(bytearray(10)))
    assert e.value.errno == errno.EBADF


def test_close_after_failed_read(tmp_image: str) -> None:
    # A traceback keeping a view of the bounce buffer must not break close.
    backend = file.open(tmp_image, "r")
    with pytest.raises(TypeError):
        backend.readinto(1, memoryview(b"read only"))  # not writable
    backend.close()


# Reading.

@pytest.mark.parametrize("offset, length, expected", [
    (0, 4096, 4096),
    (0, 10000, 10000),
    (100, 1000, 1000),
    # Short at end of file.
    (9000, 4096, 1000),
    (5000, 5000, 5000),
    (9999, 10, 1),
    # At and past end of file.
    (10000, 100, 0),
    (20000, 4096, 0),
    # Empty buffer.
    (100, 0, 0),
])
@pytest.mark.parametrize("buffer", ["bytearray", "aligned", "unaligned"])
def test_readinto(file_target: Target, offset: int, length: int,
                  expected: int, buffer: str) -> None:
    data = pattern(10000)
    write_file(file_target.path, data)
    if buffer == "bytearray":
        buf = memoryview(bytearray(length))
    else:
        mem = ioutil.aligned_buffer(length + 1)
        buf = memoryview(mem)[:length] if buffer == "aligned" else \
            memoryview(mem)[1:length + 1]
    with file.open(file_target.path, "r") as backend:
        assert backend.readinto(offset, buf) == expected
    assert bytes(buf[:expected]) == data[offset:offset + expected]


def test_readinto_item_format(tmp_image: str) -> None:
    data = pattern(8192)
    write_file(tmp_image, data)
    buf = memoryview(bytearray(8192)).cast("I")
    with file.open(tmp_image, "r") as backend:
        assert backend.readinto(0, buf) == 8192
    assert buf.tobytes() == data


def test_read_negative_offset(tmp_image: str) -> None:
    with file.open(tmp_image, "r") as backend:
        with pytest.raises(ValueError):
            backend.readinto(-1, memoryview(bytearray(1)))


# Writing.

@pytest.mark.parametrize("size, offset, length", [
    # Grow an empty file by unaligned amounts.
    (0, 0, 1),
    (0, 0, 1000),
    (0, 100, 10),
    (0, 5000, 10),
    (0, 0, 4097),
    # Append at an unaligned end of file.
    (1000, 1000, 100),
    (1000, 1000, 8000),
    (4096, 4096, 1),
    # Write past end of file, leaving a gap.
    (1000, 20000, 10),
    # Inside the file: size unchanged.
    (10000, 100, 10),
    (10000, 4095, 2),
    (10000, 9990, 10),
    # Crossing end of file.
    (10000, 9990, 20),
    (10000, 4000, 8000),
])
@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_write_exact_size(file_target: Target, size: int, offset: int,
                          length: int, sparse: bool) -> None:
    initial = pattern(size, seed=1)
    write_file(file_target.path, initial)
    data = pattern(length, seed=2)
    with file.open(file_target.path, "r+", sparse=sparse) as backend:
        backend.write(offset, memoryview(data))
        end = max(size, offset + length)
        assert backend.size() == end

    expected = bytearray(initial)
    expected.extend(bytes(max(0, offset + length - size)))
    expected[offset:offset + length] = data
    assert os.path.getsize(file_target.path) == end
    assert read_file(file_target.path) == expected


@pytest.mark.parametrize("buffer", ["bytes", "bytearray", "aligned",
                                    "unaligned"])
def test_write_buffers(file_target: Target, buffer: str) -> None:
    data = pattern(300 * KiB)
    if buffer == "bytes":
        buf = memoryview(data)
    elif buffer == "bytearray":
        buf = memoryview(bytearray(data))
    else:
        mem = ioutil.aligned_buffer(len(data) + 1)
        start = 0 if buffer == "aligned" else 1
        mem[start:start + len(data)] = data
        buf = memoryview(mem)[start:start + len(data)]
    with file.open(file_target.path, "r+") as backend:
        backend.write(8192, buf)
    assert read_file(file_target.path) == bytes(8192) + data


def test_write_negative_offset(tmp_image: str) -> None:
    with file.open(tmp_image, "r+") as backend:
        with pytest.raises(ValueError):
            backend.write(-1, memoryview(b"x"))


def test_write_empty(tmp_image: str) -> None:
    with file.open(tmp_image, "r+") as backend:
        backend.write(100, memoryview(b""))
    assert os.path.getsize(tmp_image) == 0


def test_write_block_device_past_end(block_target: Target) -> None:
    with file.open(block_target.path, "r+") as backend:
        size = backend.size()
        backend.write(size - 10, memoryview(b"x" * 10))
        assert read_all(backend, size - 10, 100) == b"x" * 10
        with pytest.raises(OSError) as e:
            backend.write(size - 10, memoryview(b"x" * 20))
        assert e.value.errno == errno.ENOSPC


# Random operations against a model.

def random_ops(seed: int, limit: int, count: int
               ) -> Iterator[tuple[str, int, int, str]]:
    rnd = random.Random(seed)
    for _ in range(count):
        op = rnd.choice(["write", "write", "zero", "read"])
        offset = rnd.choice([
            rnd.randrange(limit),
            rnd.randrange(limit // 4096) * 4096,
            rnd.randrange(limit // 512) * 512,
        ])
        length = rnd.choice([
            rnd.randrange(1, 600),
            rnd.randrange(1, 70 * KiB),
            rnd.choice([512, 4096, 64 * KiB]),
        ])
        length = min(length, limit - offset)
        buffer = rnd.choice(["bytes", "aligned", "unaligned"])
        yield op, offset, length, buffer


def make_buffer(data: bytes, kind: str) -> memoryview:
    if kind == "bytes":
        return memoryview(data)
    mem = ioutil.aligned_buffer(len(data) + 1)
    start = 0 if kind == "aligned" else 1
    mem[start:start + len(data)] = data
    return memoryview(mem)[start:start + len(data)]


@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_random_operations(any_target: Target, sparse: bool) -> None:
    limit = 512 * KiB
    model = bytearray()
    if any_target.block_device:
        # The device was discarded: it reads as zeros.
        model = bytearray(limit)
    seed = zlib.crc32(f"{any_target.name}-{sparse}".encode())
    with file.open(any_target.path, "r+", sparse=sparse) as backend:
        for i, (op, offset, length, kind) in enumerate(
                random_ops(seed, limit, 60)):
            where = f"step {i}: {op} {offset} {length} {kind}"
            if op == "write":
                data = pattern(length, seed=i)
                backend.write(offset, make_buffer(data, kind))
                if offset + length > len(model):
                    model.extend(bytes(offset + length - len(model)))
                model[offset:offset + length] = data
            elif op == "zero":
                backend.zero(offset, length)
                if offset + length > len(model):
                    model.extend(bytes(offset + length - len(model)))
                model[offset:offset + length] = bytes(length)
            else:
                buf = make_buffer(bytes(length), kind)
                if kind == "bytes":
                    buf = memoryview(bytearray(length))
                n = backend.readinto(offset, buf)
                expected = model[offset:offset + length]
                assert n == len(expected), where
                assert buf[:n] == expected, where

            if not any_target.block_device:
                assert backend.size() == len(model), where
            assert read_all(backend, 0, len(model)) == model, where

    if not any_target.block_device:
        assert read_file(any_target.path) == model


# Zeroing.

@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_zero_allocation(file_target: Target, sparse: bool) -> None:
    write_file(file_target.path, pattern(1 * MiB))
    assert allocated(file_target.path) >= 1 * MiB
    with file.open(file_target.path, "r+", sparse=sparse) as backend:
        backend.zero(0, 1 * MiB)
        # Zeroing past end of file grows the file.
        backend.zero(1 * MiB, 1 * MiB)
        assert backend.size() == 2 * MiB
    assert read_file(file_target.path) == bytes(2 * MiB)

    if sparse:
        # At most some metadata blocks (ext2 indirect blocks).
        assert allocated(file_target.path) <= 16 * KiB
    else:
        assert allocated(file_target.path) >= 2 * MiB


@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_zero_block_device(block_target: Target, sparse: bool) -> None:
    with file.open(block_target.path, "r+", sparse=sparse) as backend:
        backend.write(0, memoryview(b"x" * 1 * MiB))
        backend.zero(4096, 64 * KiB)
        backend.zero(100 * KiB + 1, 1000)
        expected = bytearray(b"x" * 1 * MiB)
        expected[4096:4096 + 64 * KiB] = bytes(64 * KiB)
        expected[100 * KiB + 1:100 * KiB + 1001] = bytes(1000)
        assert read_all(backend, 0, 1 * MiB) == expected


def test_zero_block_device_past_end(block_target: Target) -> None:
    with file.open(block_target.path, "r+") as backend:
        size = backend.size()
        backend.write(size - 4096, memoryview(b"x" * 4096))
        with pytest.raises(OSError) as e:
            backend.zero(size - 4096, 8192)
        assert e.value.errno == errno.ENOSPC
        # Nothing was changed.
        assert read_all(backend, size - 4096, 4096) == b"x" * 4096


class FallocateSpy:
    """Record fallocate calls and fail the modes in unsupported."""

    def __init__(self, unsupported: set[int], errnum: int = errno.EOPNOTSUPP
                 ) -> None:
        self.unsupported = unsupported
        self.errnum = errnum
        self.calls: list[int] = []
        self._real = ioutil.fallocate

    def __call__(self, fd: int, mode: int, offset: int, length: int) -> None:
        self.calls.append(mode)
        if mode in self.unsupported:
            raise OSError(self.errnum,
                          f"fallocate: {os.strerror(self.errnum)}")
        self._real(fd, mode, offset, length)


@pytest.mark.parametrize("unsupported, sparse, first, second", [
    # No ZERO_RANGE: punch and allocate again.
    ({file_zero.ZERO_RANGE}, False,
     [file_zero.ZERO_RANGE, file_zero.PUNCH_HOLE, file_zero.ALLOCATE],
     [file_zero.PUNCH_HOLE, file_zero.ALLOCATE]),
    # No fallocate at all: write zeros, trying each mode once.
    ({file_zero.ZERO_RANGE, file_zero.PUNCH_HOLE, file_zero.ALLOCATE}, False,
     [file_zero.ZERO_RANGE, file_zero.PUNCH_HOLE], []),
    # Punching works but allocating does not (ext2): write zeros, and do
    # not punch again.
    ({file_zero.ZERO_RANGE, file_zero.ALLOCATE}, False,
     [file_zero.ZERO_RANGE, file_zero.PUNCH_HOLE, file_zero.ALLOCATE], []),
    # Sparse without punching: write zeros.
    ({file_zero.PUNCH_HOLE}, True, [file_zero.PUNCH_HOLE], []),
])
def test_zero_fallbacks_remembered(tmp_image: str, monkeypatch: Any,
                                   unsupported: set[int], sparse: bool,
                                   first: list[int], second: list[int]
                                   ) -> None:
    spy = FallocateSpy(unsupported)
    monkeypatch.setattr(ioutil, "fallocate", spy)
    write_file(tmp_image, b"x" * 1 * MiB)
    with file.open(tmp_image, "r+", sparse=sparse) as backend:
        backend.zero(0, 64 * KiB)
        assert spy.calls == first
        spy.calls.clear()
        backend.zero(512 * KiB, 64 * KiB)
        assert spy.calls == second
    if not sparse:
        assert allocated(tmp_image) >= 1 * MiB
    expected = bytearray(b"x" * 1 * MiB)
    expected[0:64 * KiB] = bytes(64 * KiB)
    expected[512 * KiB:576 * KiB] = bytes(64 * KiB)
    assert read_file(tmp_image) == expected


@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_zero_past_eof_without_fallocate(tmp_image: str, monkeypatch: Any,
                                         sparse: bool) -> None:
    spy = FallocateSpy({file_zero.ZERO_RANGE, file_zero.PUNCH_HOLE,
                        file_zero.ALLOCATE})
    monkeypatch.setattr(ioutil, "fallocate", spy)
    write_file(tmp_image, b"x" * 1000)
    with file.open(tmp_image, "r+", sparse=sparse) as backend:
        backend.zero(500, 1 * MiB)
        assert backend.size() == 500 + 1 * MiB
    assert read_file(tmp_image) == b"x" * 500 + bytes(1 * MiB)
    if sparse:
        # Growing with ftruncate: nothing written.
        assert allocated(tmp_image) < 64 * KiB
    else:
        assert allocated(tmp_image) >= 1 * MiB


@pytest.mark.parametrize("errnum", [errno.EOPNOTSUPP, errno.ENODEV])
@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_zero_block_device_blkzeroout(block_target: Target,
                                      monkeypatch: Any, errnum: int,
                                      sparse: bool) -> None:
    spy = FallocateSpy({file_zero.ZERO_RANGE, file_zero.PUNCH_HOLE}, errnum)
    monkeypatch.setattr(ioutil, "fallocate", spy)
    zeroed: list[tuple[int, int]] = []
    real_blkzeroout = ioutil.blkzeroout

    def blkzeroout(fd: int, offset: int, length: int) -> None:
        zeroed.append((offset, length))
        real_blkzeroout(fd, offset, length)

    monkeypatch.setattr(ioutil, "blkzeroout", blkzeroout)
    with file.open(block_target.path, "r+", sparse=sparse) as backend:
        backend.write(0, memoryview(b"x" * 256 * KiB))
        backend.zero(0, 64 * KiB)
        backend.zero(128 * KiB, 64 * KiB)
        assert len(spy.calls) == 1
        assert zeroed == [(0, 64 * KiB), (128 * KiB, 64 * KiB)]
        expected = (bytes(64 * KiB) + b"x" * 64 * KiB + bytes(64 * KiB)
                    + b"x" * 64 * KiB)
        assert read_all(backend, 0, 256 * KiB) == expected


def test_zero_other_errors_propagate(tmp_image: str, monkeypatch: Any
                                     ) -> None:
    spy = FallocateSpy({file_zero.ZERO_RANGE}, errno.EIO)
    monkeypatch.setattr(ioutil, "fallocate", spy)
    write_file(tmp_image, b"x" * 8192)
    with file.open(tmp_image, "r+") as backend:
        with pytest.raises(OSError) as e:
            backend.zero(0, 4096)
        assert e.value.errno == errno.EIO


@pytest.mark.parametrize("size, offset, length", [
    (10000, 100, 10),
    (10000, 0, 10000),
    (10000, 9000, 5000),
    (1000, 2000, 100),
    (0, 100, 1),
    (4096, 1, 4094),
])
@pytest.mark.parametrize("sparse", [False, True], ids=["prealloc", "sparse"])
def test_zero_unaligned(file_target: Target, size: int, offset: int,
                        length: int, sparse: bool) -> None:
    initial = pattern(size)
    write_file(file_target.path, initial)
    with file.open(file_target.path, "r+", sparse=sparse) as backend:
        backend.zero(offset, length)
    expected = bytearray(initial)
    expected.extend(bytes(max(0, offset + length - size)))
    expected[offset:offset + length] = bytes(length)
    assert read_file(file_target.path) == expected


def test_zero_invalid(tmp_image: str) -> None:
    with file.open(tmp_image, "r+") as backend:
        with pytest.raises(ValueError):
            backend.zero(-1, 10)
        with pytest.raises(ValueError):
            backend.zero(0, -1)
        backend.zero(100, 0)
    assert os.path.getsize(tmp_image) == 0


# Flush.

def test_flush(file_target: Target) -> None:
    with file.open(file_target.path, "r+") as backend:
        backend.write(0, memoryview(b"x" * 100))
        backend.flush()
    assert read_file(file_target.path) == b"x" * 100


def test_flush_closed(tmp_image: str) -> None:
    backend = file.open(tmp_image, "r+")
    backend.close()
    with pytest.raises(OSError) as e:
        backend.flush()
    assert e.value.errno == errno.EBADF


# Extents.

def make_sparse_file(path: str, size: int,
                     data: list[tuple[int, int]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for start, length in data:
            f.seek(start)
            f.write(b"x" * length)
        f.flush()
        os.fsync(f.fileno())


def data_extent(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=False, hole=False)


def hole_extent(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=True, hole=False)


@pytest.mark.parametrize("size, data, expected", [
    (0, [], []),
    (1 * MiB, [], [hole_extent(0, 1 * MiB)]),
    (1 * MiB, [(0, 1 * MiB)], [data_extent(0, 1 * MiB)]),
    # Adjacent writes are merged by the file system or by us.
    (1 * MiB, [(0, 64 * KiB), (64 * KiB, 64 * KiB)],
     [data_extent(0, 128 * KiB), hole_extent(128 * KiB, 896 * KiB)]),
    (3 * MiB + 100, [(64 * KiB, 64 * KiB), (1 * MiB, 64 * KiB)], [
        hole_extent(0, 64 * KiB),
        data_extent(64 * KiB, 64 * KiB),
        hole_extent(128 * KiB, 896 * KiB),
        data_extent(1 * MiB, 64 * KiB),
        hole_extent(1 * MiB + 64 * KiB, 2 * MiB - 64 * KiB + 100),
    ]),
    # Data at an unaligned end of file: clipped to the size.
    (100 * KiB + 10, [(96 * KiB, 4 * KiB + 10)],
     [hole_extent(0, 96 * KiB), data_extent(96 * KiB, 4 * KiB + 10)]),
])
def test_extents_file(tmp_image: str, size: int,
                      data: list[tuple[int, int]],
                      expected: list[ZeroExtent]) -> None:
    make_sparse_file(tmp_image, size, data)
    with file.open(tmp_image, "r") as backend:
        assert list(backend.extents()) == expected
        assert list(backend.extents("zero")) == expected


def test_extents_after_sparse_zero(file_target: Target) -> None:
    with file.open(file_target.path, "r+", sparse=True) as backend:
        backend.write(0, memoryview(b"x" * 1 * MiB))
        backend.zero(256 * KiB, 512 * KiB)
        assert list(backend.extents()) == [
            data_extent(0, 256 * KiB),
            hole_extent(256 * KiB, 512 * KiB),
            data_extent(768 * KiB, 256 * KiB),
        ]


def test_extents_block_device(block_target: Target) -> None:
    with file.open(block_target.path, "r") as backend:
        assert list(backend.extents()) == [data_extent(0, storage.GiB)]


def test_extents_dirty_unsupported(tmp_image: str) -> None:
    with file.open(tmp_image, "r") as backend:
        # Raised by the call, not when iterating.
        with pytest.raises(base.UnsupportedContext):
            backend.extents("dirty")


def test_is_backend(tmp_image: str) -> None:
    def check(backend: base.Backend) -> str:
        return backend.name

    with file.open(tmp_image, "r") as backend:
        assert check(backend) == "file"



# Concurrent writers.

def test_concurrent_writers_distinct_unaligned_ranges(
        file_target: Target) -> None:
    """
    Several backends of one file (one per connection) write distinct
    ranges whose unaligned edges share blocks, and some extend the file:
    every byte must land, and the size must be exact.
    """
    path = file_target.path
    write_file(path, b"")
    writers = 4
    rounds = 40
    # Interleaved ranges of odd lengths: neighbours share blocks at both
    # ends, and the last ones grow the file past its current end.
    spans = []
    pos = 0
    for i in range(writers * rounds):
        length = 1000 + (i * 977) % 9000
        spans.append((pos, length))
        pos += length
    size = pos
    data = pattern(size, seed=7)
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(index: int) -> None:
        try:
            with file.open(path, "r+") as backend:
                barrier.wait()
                for offset, length in spans[index::writers]:
                    buf = memoryview(bytearray(data[offset:offset + length]))
                    backend.write(offset, buf)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,))
               for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert read_file(path) == data
    assert os.path.getsize(path) == size
