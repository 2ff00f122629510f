# SPDX-License-Identifier: GPL-2.0-or-later
"""Tests for ovirt_imageio.backends.memory."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends import base
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.util.extents import DirtyExtent, Extent, ZeroExtent


def read(backend: MemoryBackend, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    n = backend.readinto(offset, memoryview(buf))
    return bytes(buf[:n])


def test_defaults() -> None:
    backend = MemoryBackend()
    assert backend.name == "memory"
    assert backend.size() == 0
    assert backend.data == bytearray()
    caps = backend.capabilities
    assert caps.block_size == 1
    assert caps.max_readers == 8
    assert caps.max_writers == 1
    assert caps.extents == frozenset({"zero"})


def test_max_connections() -> None:
    caps = MemoryBackend(max_connections=3).capabilities
    assert caps.max_readers == 3
    assert caps.max_writers == 1


def test_data_is_shared() -> None:
    data = bytearray(b"hello")
    backend = MemoryBackend(data)
    backend.write(0, memoryview(b"J"))
    assert data == b"Jello"
    assert backend.data is data


@pytest.mark.parametrize("offset, length, expected", [
    (0, 5, b"hello"),
    (1, 3, b"ell"),
    # Short at the end.
    (3, 10, b"lo"),
    # At and past the end.
    (5, 10, b""),
    (100, 10, b""),
    (0, 0, b""),
])
def test_readinto(offset: int, length: int, expected: bytes) -> None:
    backend = MemoryBackend(bytearray(b"hello"))
    assert read(backend, offset, length) == expected


def test_readinto_item_format() -> None:
    backend = MemoryBackend(bytearray(b"abcdefgh"))
    buf = memoryview(bytearray(8)).cast("I")
    assert backend.readinto(0, buf) == 8
    assert buf.tobytes() == b"abcdefgh"


@pytest.mark.parametrize("initial, offset, data, expected", [
    (b"hello", 0, b"J", b"Jello"),
    (b"hello", 5, b" world", b"hello world"),
    # Past the end: the gap reads as zeros.
    (b"ab", 4, b"cd", b"ab\0\0cd"),
    (b"", 0, b"", b""),
    (b"hello", 2, b"", b"hello"),
])
def test_write(initial: bytes, offset: int, data: bytes,
               expected: bytes) -> None:
    backend = MemoryBackend(bytearray(initial))
    backend.write(offset, memoryview(data))
    assert backend.data == expected
    assert backend.size() == len(expected)


@pytest.mark.parametrize("initial, offset, length, expected", [
    (b"hello", 1, 3, b"h\0\0\0o"),
    (b"hello", 3, 4, b"hel\0\0\0\0"),
    (b"ab", 4, 2, b"ab\0\0\0\0"),
    (b"hello", 0, 0, b"hello"),
])
def test_zero(initial: bytes, offset: int, length: int,
              expected: bytes) -> None:
    backend = MemoryBackend(bytearray(initial))
    backend.zero(offset, length)
    assert backend.data == expected


@given(st.lists(st.tuples(
    st.sampled_from(["write", "zero"]),
    st.integers(0, 100),
    st.binary(max_size=50),
), max_size=20))
def test_model(ops: list[tuple[str, int, bytes]]) -> None:
    # The backend behaves like a file written with pwrite.
    backend = MemoryBackend()
    model = bytearray()
    for op, offset, data in ops:
        end = offset + len(data)
        if end > len(model):
            model.extend(bytes(end - len(model)))
        if op == "write":
            backend.write(offset, memoryview(data))
            model[offset:end] = data
        else:
            backend.zero(offset, len(data))
            model[offset:end] = bytes(len(data))
    assert backend.data == model
    assert read(backend, 0, len(model) + 10) == model


@pytest.mark.parametrize("call", [
    lambda b: b.write(0, memoryview(b"x")),
    lambda b: b.zero(0, 1),
])
def test_read_only(call: Any) -> None:
    backend = MemoryBackend(bytearray(b"hello"), mode="r")
    with pytest.raises(PermissionError) as e:
        call(backend)
    assert e.value.errno == errno.EPERM
    assert backend.data == b"hello"
    # Reading still works.
    assert read(backend, 0, 5) == b"hello"


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryBackend(mode="w")  # type: ignore[arg-type]
    backend = MemoryBackend()
    with pytest.raises(ValueError):
        backend.readinto(-1, memoryview(bytearray(1)))
    with pytest.raises(ValueError):
        backend.write(-1, memoryview(b"x"))
    with pytest.raises(ValueError):
        backend.zero(0, -1)


def test_flush_counts() -> None:
    backend = MemoryBackend()
    backend.flush()
    backend.flush()
    assert backend.flush_count == 2


def test_close() -> None:
    backend = MemoryBackend(bytearray(b"x"))
    backend.close()
    backend.close()
    with pytest.raises(OSError) as e:
        read(backend, 0, 1)
    assert e.value.errno == errno.EBADF


def test_context_manager() -> None:
    with MemoryBackend() as backend:
        backend.write(0, memoryview(b"x"))
    with pytest.raises(OSError):
        backend.size()


# Extents.

def test_extents_default() -> None:
    backend = MemoryBackend(bytearray(b"hello"))
    assert list(backend.extents()) == [ZeroExtent(0, 5, False, False)]
    assert list(backend.extents("zero")) == [ZeroExtent(0, 5, False, False)]


def test_extents_default_empty() -> None:
    assert list(MemoryBackend().extents()) == []


def test_extents_dirty_unsupported() -> None:
    backend = MemoryBackend(bytearray(b"hello"))
    # Raised by the call, not when iterating.
    with pytest.raises(base.UnsupportedContext):
        backend.extents("dirty")


def test_extents_list() -> None:
    zero = [ZeroExtent(0, 2, False, False), ZeroExtent(2, 3, True, True)]
    dirty = [DirtyExtent(0, 4, True, False), DirtyExtent(4, 1, False, True)]
    both: list[Extent] = [*zero, *dirty]
    backend = MemoryBackend(bytearray(5), extents=both)
    assert list(backend.extents("zero")) == zero
    assert list(backend.extents("dirty")) == dirty
    assert backend.capabilities.extents == frozenset({"zero", "dirty"})


def test_extents_dict() -> None:
    dirty = [DirtyExtent(0, 5, True, False)]
    backend = MemoryBackend(bytearray(5), extents={"dirty": dirty})
    assert list(backend.extents("dirty")) == dirty
    # Zero context falls back to one data extent.
    assert list(backend.extents("zero")) == [ZeroExtent(0, 5, False, False)]
    with pytest.raises(base.UnsupportedContext):
        backend.extents("other")


def test_is_backend() -> None:
    def check(backend: base.Backend) -> str:
        return backend.name

    assert check(MemoryBackend()) == "memory"
