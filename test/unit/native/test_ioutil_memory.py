# SPDX-License-Identifier: GPL-2.0-or-later
"""
ovirt_imageio.native.ioutil on memory alone: aligned buffers, buffer
addresses, zero detection and the fallocate constants. Files, block
devices, sockets and forks are tested in
test/integration/native/test_ioutil.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.native import ioutil

MiB = 1024**2


# Buffers.

@pytest.mark.parametrize("size", [1, 512, 4096, 10000, 1 * MiB])
def test_aligned_buffer(size: int) -> None:
    buf = ioutil.aligned_buffer(size)
    try:
        assert len(buf) == size
        assert ioutil.buffer_address(buf) % 4096 == 0
        assert ioutil.is_zero(buf)
    finally:
        buf.close()


@pytest.mark.parametrize("size", [0, -1])
def test_aligned_buffer_invalid(size: int) -> None:
    with pytest.raises(ValueError):
        ioutil.aligned_buffer(size)


def test_buffer_address_of_slice() -> None:
    buf = ioutil.aligned_buffer(8192)
    try:
        with memoryview(buf) as view:
            base = ioutil.buffer_address(view)
            assert ioutil.buffer_address(view[513:]) == base + 513
    finally:
        buf.close()


# is_zero.

@pytest.mark.parametrize("data, expected", [
    (b"", True),
    (b"\0", True),
    (b"\1", False),
    (b"\0" * 16, True),
    (b"\0" * 15 + b"\1", False),
    # First byte after the prefix checked one by one.
    (b"\0" * 16 + b"\1", False),
    (b"\0" * 17, True),
    # The last byte of a large buffer.
    (b"\0" * (1 * MiB - 1) + b"\x80", False),
    (b"\0" * 1 * MiB, True),
    # Non-zero in the middle only.
    (b"\0" * 5000 + b"\1" + b"\0" * 5000, False),
])
def test_is_zero(data: bytes, expected: bool) -> None:
    assert ioutil.is_zero(data) is expected
    assert ioutil.is_zero(bytearray(data)) is expected
    assert ioutil.is_zero(memoryview(data)) is expected


@given(st.binary(max_size=200), st.integers(0, 199))
def test_is_zero_property(data: bytes, pos: int) -> None:
    assert ioutil.is_zero(data) == (data.count(0) == len(data))
    zeros = bytearray(200)
    zeros[pos] = 1
    assert not ioutil.is_zero(zeros)


# fallocate.

def test_falloc_constants() -> None:
    # Linux ABI values (linux/falloc.h).
    assert ioutil.FALLOC_FL_KEEP_SIZE == 0x01
    assert ioutil.FALLOC_FL_PUNCH_HOLE == 0x02
    assert ioutil.FALLOC_FL_ZERO_RANGE == 0x10
