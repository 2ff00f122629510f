# SPDX-License-Identifier: GPL-2.0-or-later
"""
ops.Read from a backend whose reads come back in pieces of its own
memory (Capabilities.read_pieces, librbd): the bytes sent are the bytes
of the range, whatever the block size, buffer size and cut of the
pieces, exactly as through readinto; an image ending early is ShortData.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends.base import Capabilities
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops
from ovirt_imageio.transfer.errors import ShortData

DATA = bytes(range(256)) * 4


class Pieces(MemoryBackend):
    """Reads in pieces of ``piece`` bytes, each a new bytes object."""

    def __init__(self, data: bytes, piece: int, block: int) -> None:
        super().__init__(bytearray(data))
        self._caps = dataclasses.replace(
            super().capabilities, read_pieces=True, block_size=block)
        self._piece = piece
        self.readinto_calls = 0

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def readinto(self, offset: int, buf: memoryview) -> int:
        self.readinto_calls += 1
        return super().readinto(offset, buf)

    def read_pieces(self, offset: int, length: int) -> list[memoryview]:
        end = min(offset + length, len(self.data))
        return [memoryview(bytes(self.data[pos:min(pos + self._piece, end)]))
                for pos in range(offset, end, self._piece)]


class Sink:
    def __init__(self) -> None:
        self.received = bytearray()
        self.writes = 0

    def write(self, data: object) -> None:
        assert isinstance(data, memoryview)
        assert len(data) > 0
        self.received += data
        self.writes += 1


def download(backend: MemoryBackend, offset: int, length: int,
             bufsize: int) -> Sink:
    sink = Sink()
    pair = (memoryview(bytearray(bufsize)), memoryview(bytearray(bufsize)))
    ops.Read(backend, sink, offset, length, pair).run()
    return sink


@pytest.mark.parametrize("offset,length,piece,block,bufsize", [
    # Whole image, pieces dividing the buffer.
    (0, len(DATA), 64, 1, 256),
    # Pieces straddling buffers.
    (0, len(DATA), 100, 1, 256),
    # Unaligned head and tail: the first and last spans skip bytes.
    (3, 500, 64, 8, 128),
    (5, 1, 7, 16, 64),
    # One piece larger than a span.
    (10, 300, 1024, 1, 64),
])
def test_pieces_sent_as_the_range(offset: int, length: int, piece: int,
                                  block: int, bufsize: int) -> None:
    backend = Pieces(DATA, piece, block)
    sink = download(backend, offset, length, bufsize)
    assert bytes(sink.received) == DATA[offset:offset + length]
    assert backend.readinto_calls == 0


@given(offset=st.integers(0, len(DATA) - 1), length=st.integers(1, 600),
       piece=st.integers(1, 300), block=st.sampled_from([1, 4, 512]),
       bufsize=st.sampled_from([512, 1024]))
def test_pieces_same_as_readinto(offset: int, length: int, piece: int,
                                 block: int, bufsize: int) -> None:
    length = min(length, len(DATA) - offset)
    backend = Pieces(DATA, piece, block)
    plain = MemoryBackend(bytearray(DATA))
    assert bytes(download(backend, offset, length, bufsize).received) == \
        bytes(download(plain, offset, length, bufsize).received)


def test_image_ending_early_is_short_data() -> None:
    backend = Pieces(DATA[:300], 64, 1)
    with pytest.raises(ShortData):
        download(backend, 200, 200, 128)
