# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.nbd import transmission, wire
from ovirt_imageio.nbd.handshake import Export, ProtocolViolation
from ovirt_imageio.nbd.transmission import (
    DISCONNECT,
    Request,
    check,
    descriptors,
    parse_request,
)
from ovirt_imageio.util.extents import DirtyExtent, ZeroExtent

from support import nbd_messages as m

SIZE = 1024**2
RW = Export(size=SIZE, readonly=False)
RO = Export(size=SIZE, readonly=True)
BASE = {1: wire.CONTEXT_BASE_ALLOCATION}
MAX = wire.MAX_PAYLOAD

FUA = wire.CMD_FLAG_FUA


def test_doctests() -> None:
    assert doctest.testmod(transmission).failed == 0
    assert doctest.testmod(wire).failed == 0


@given(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1),
       st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.integers(0, 2**32 - 1))
def test_parse_request_round_trip(flags: int, type_: int, handle: int,
                                  offset: int, length: int) -> None:
    data = m.request(type_, offset, length, flags, handle)
    assert parse_request(data) == Request(flags, type_, handle, offset,
                                          length)


def test_parse_request_bad_magic() -> None:
    data = bytearray(m.request(wire.CMD_READ, 0, 512))
    data[0] ^= 1
    with pytest.raises(ProtocolViolation):
        parse_request(data)


def test_parse_request_wrong_size() -> None:
    with pytest.raises(ValueError):
        parse_request(m.request(wire.CMD_READ)[:27])


def req(type_: int, offset: int = 0, length: int = 512, flags: int = 0
        ) -> Request:
    return Request(flags, type_, 1, offset, length)


# (request, export, structured, contexts, expected)
CHECKS = [
    (req(wire.CMD_READ), RO, False, {}, 0),
    (req(wire.CMD_READ, SIZE - 512), RO, False, {}, 0),
    (req(wire.CMD_READ, SIZE - 511), RO, False, {}, wire.EINVAL),
    (req(wire.CMD_READ, 2**64 - 1), RO, False, {}, wire.EINVAL),
    (req(wire.CMD_READ, length=0), RO, False, {}, wire.EINVAL),
    (req(wire.CMD_READ, flags=wire.CMD_FLAG_DF), RO, True, {}, 0),
    (req(wire.CMD_READ, flags=wire.CMD_FLAG_NO_HOLE), RO, True, {},
     wire.EINVAL),
    (req(wire.CMD_READ, flags=1 << 15), RO, True, {}, wire.EINVAL),
    (Request(0, wire.CMD_READ, 1, 0, MAX + 1),
     Export(size=2 * MAX), False, {}, wire.EINVAL),
    (req(wire.CMD_WRITE), RW, False, {}, 0),
    (req(wire.CMD_WRITE, flags=FUA), RW, False, {}, 0),
    (req(wire.CMD_WRITE), RO, False, {}, wire.EPERM),
    (req(wire.CMD_WRITE, SIZE), RW, False, {}, wire.ENOSPC),
    (Request(0, wire.CMD_WRITE, 1, 0, MAX + 1),
     Export(size=2 * MAX, readonly=False), False, {}, DISCONNECT),
    (req(wire.CMD_WRITE_ZEROES, flags=wire.CMD_FLAG_NO_HOLE | FUA), RW,
     False, {}, 0),
    (req(wire.CMD_WRITE_ZEROES, flags=wire.CMD_FLAG_FAST_ZERO), RW,
     False, {}, wire.EINVAL),
    (req(wire.CMD_WRITE_ZEROES), RO, False, {}, wire.EPERM),
    # Zeroing and trimming are not bounded by the payload size.
    (Request(0, wire.CMD_WRITE_ZEROES, 1, 0, 2**32 - 1),
     Export(size=2**33, readonly=False), False, {}, 0),
    (req(wire.CMD_TRIM, SIZE - 1, 2), RW, False, {}, wire.ENOSPC),
    (req(wire.CMD_TRIM), RO, False, {}, wire.EPERM),
    (req(wire.CMD_FLUSH, 0, 0), RO, False, {}, 0),
    (req(wire.CMD_FLUSH, 0, 1), RW, False, {}, wire.EINVAL),
    (req(wire.CMD_CACHE), RO, False, {}, 0),
    (req(wire.CMD_CACHE, SIZE), RO, False, {}, wire.EINVAL),
    (req(wire.CMD_BLOCK_STATUS), RO, True, BASE, 0),
    (req(wire.CMD_BLOCK_STATUS, flags=wire.CMD_FLAG_REQ_ONE), RO, True,
     BASE, 0),
    (req(wire.CMD_BLOCK_STATUS), RO, True, {}, wire.EINVAL),
    (req(wire.CMD_BLOCK_STATUS), RO, False, BASE, wire.EINVAL),
    (req(wire.CMD_BLOCK_STATUS, length=0), RO, True, BASE, wire.EINVAL),
    (req(8), RW, True, {}, wire.EINVAL),
    (req(0xFFFF), RW, True, {}, wire.EINVAL),
]


@pytest.mark.parametrize("request_,export,structured,contexts,expected",
                         CHECKS)
def test_check(request_: Request, export: Export, structured: bool,
               contexts: dict[int, str], expected: int) -> None:
    assert check(request_, export, structured, contexts) == expected


def test_simple_reply() -> None:
    assert transmission.simple_reply(7, wire.EIO) == struct.pack(
        ">IIQ", 0x67446698, 5, 7)


def test_offset_data_header() -> None:
    assert transmission.offset_data_header(7, 4096, 512) == struct.pack(
        ">IHHQIQ", 0x668E33EF, 1, 1, 7, 520, 4096)


def test_error_chunk() -> None:
    assert transmission.error_chunk(7, wire.EPERM, "no") == struct.pack(
        ">IHHQIIH", 0x668E33EF, 1, (1 << 15) | 1, 7, 8, 1, 2) + b"no"


def test_error_reply_simple_or_structured() -> None:
    assert transmission.error_reply(3, 22, False) == struct.pack(
        ">IIQ", 0x67446698, 22, 3)
    assert transmission.error_reply(3, 22, True, "m")[:4] == struct.pack(
        ">I", 0x668E33EF)


def test_block_status_chunk() -> None:
    chunk = transmission.block_status_chunk(9, 1, [(10, 0), (20, 3)], False)
    assert chunk == struct.pack(">IHHQIIIIII", 0x668E33EF, 0, 5, 9, 20, 1,
                                10, 0, 20, 3)


# Block status descriptors.

EXTENTS = [ZeroExtent(0, 100, False, False),
           ZeroExtent(100, 100, True, False),
           ZeroExtent(200, 100, True, True)]


@pytest.mark.parametrize("offset,length,one,expected", [
    (0, 300, False, [(100, 0), (100, 2), (100, 3)]),
    (50, 100, False, [(50, 0), (50, 2)]),
    (150, 1, False, [(1, 2)]),
    (0, 300, True, [(100, 0)]),
    (250, 10, True, [(10, 3)]),
    (300, 10, False, []),
])
def test_descriptors(offset: int, length: int, one: bool,
                     expected: list[tuple[int, int]]) -> None:
    assert descriptors(EXTENTS, offset, length, one) == expected


def test_descriptors_dirty() -> None:
    extents = [DirtyExtent(0, 10, True, False), DirtyExtent(10, 10, False,
                                                            True)]
    assert descriptors(extents, 0, 20) == [(10, wire.STATE_DIRTY), (10, 0)]


def test_descriptors_split_long_extents() -> None:
    found = descriptors([ZeroExtent(0, 2**33, True, True)], 0, 2**33)
    assert all(n < 2**32 for n, _ in found)
    assert sum(n for n, _ in found) == 2**33


def test_descriptors_stop_reading_past_the_range() -> None:
    def extents() -> Iterator[ZeroExtent]:
        yield ZeroExtent(0, 10, False, False)
        yield ZeroExtent(10, 10, True, False)
        raise AssertionError("read past the range")

    assert descriptors(extents(), 0, 5) == [(5, 0)]


@given(st.lists(st.tuples(st.integers(1, 1000), st.booleans(),
                          st.booleans()), min_size=1, max_size=20),
       st.data())
def test_descriptors_cover_the_range(spans: list[tuple[int, bool, bool]],
                                     data: st.DataObject) -> None:
    extents = []
    pos = 0
    for n, zero, hole in spans:
        extents.append(ZeroExtent(pos, n, zero, hole))
        pos += n
    offset = data.draw(st.integers(0, pos - 1))
    length = data.draw(st.integers(1, pos - offset))
    found = descriptors(extents, offset, length)
    assert sum(n for n, _ in found) == length
    # Each byte keeps the status of the extent holding it.
    at = offset
    for n, status in found:
        for ext in extents:
            if ext.start < at + n and at < ext.end:
                assert status == transmission.status_flags(ext)
        at += n
    # Neighbours of equal status are joined.
    assert all(a[1] != b[1] for a, b in zip(found, found[1:], strict=False))
