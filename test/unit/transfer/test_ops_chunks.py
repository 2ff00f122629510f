# SPDX-License-Identifier: GPL-2.0-or-later
"""The chunk math of transfer/ops: how requests are cut into buffers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer.ops import download_spans, upload_chunks

KiB = 1024

blocks = st.sampled_from([1, 512, 4096])
# Buffers are whole pages, so a multiple of every block size.
bufsizes = st.sampled_from([4 * KiB, 8 * KiB, 64 * KiB, 1024 * KiB])


@pytest.mark.parametrize("offset, length, block, bufsize, chunks", [
    (0, 0, 512, 4096, []),
    (100, 0, 512, 4096, []),
    # Aligned: full buffers, then the rest.
    (0, 10000, 512, 4096, [(0, 4096), (4096, 4096), (8192, 1808)]),
    # An unaligned start gets a head up to the boundary.
    (100, 1000, 512, 512, [(100, 412), (512, 512), (1024, 76)]),
    (100, 5000, 512, 4096, [(100, 412), (512, 4096), (4608, 492)]),
    # Within one block.
    (100, 10, 512, 4096, [(100, 10)]),
    # Block 1: no head.
    (100, 5000, 1, 4096, [(100, 4096), (4196, 904)]),
])
def test_upload_chunks(offset: int, length: int, block: int, bufsize: int,
                       chunks: list[tuple[int, int]]) -> None:
    assert upload_chunks(offset, length, block, bufsize) == chunks


@given(offset=st.integers(0, 2**40), length=st.integers(0, 2**22),
       block=blocks, bufsize=bufsizes)
def test_upload_chunks_properties(offset: int, length: int, block: int,
                                  bufsize: int) -> None:
    chunks = upload_chunks(offset, length, block, bufsize)
    # The chunks tile the request exactly, in order, none empty or
    # larger than a buffer.
    pos = offset
    for start, n in chunks:
        assert start == pos
        assert 0 < n <= bufsize
        pos += n
    assert pos == offset + length
    # Every chunk but the first starts aligned, and so does every chunk
    # but the last end: only the edges of a request are unaligned.
    for start, _ in chunks[1:]:
        assert start % block == 0
    for start, n in chunks[:-1]:
        assert (start + n) % block == 0
    # No more chunks than needed.
    head = 1 if offset % block and chunks else 0
    assert len(chunks) <= head + -(-length // bufsize)


@pytest.mark.parametrize("offset, length, block, bufsize, spans", [
    (0, 0, 512, 4096, []),
    # Nothing to send: nothing to read, wherever it starts.
    (100, 0, 512, 4096, []),
    (0, 4096, 512, 4096, [(0, 4096, 0, 4096)]),
    (100, 1000, 512, 1024, [(0, 1024, 100, 924), (1024, 512, 0, 76)]),
    # Within one block: read the block, send the middle of it.
    (600, 10, 512, 4096, [(512, 512, 88, 10)]),
    (0, 9000, 4096, 4096,
     [(0, 4096, 0, 4096), (4096, 4096, 0, 4096), (8192, 4096, 0, 808)]),
    (5, 10, 1, 8, [(5, 8, 0, 8), (13, 2, 0, 2)]),
])
def test_download_spans(offset: int, length: int, block: int, bufsize: int,
                        spans: list[tuple[int, int, int, int]]) -> None:
    assert download_spans(offset, length, block, bufsize) == spans


@given(offset=st.integers(0, 2**40), length=st.integers(0, 2**22),
       block=blocks, bufsize=bufsizes)
def test_download_spans_properties(offset: int, length: int, block: int,
                                   bufsize: int) -> None:
    spans = download_spans(offset, length, block, bufsize)
    if length == 0:
        assert spans == []
        return
    # Reads are aligned, whole blocks, at most a buffer, and contiguous
    # from the block holding the first byte to the block holding the
    # last.
    pos = offset - offset % block
    for roff, rlen, _, _ in spans:
        assert roff == pos
        assert roff % block == 0 and rlen % block == 0
        assert 0 < rlen <= bufsize
        pos += rlen
    end = offset + length
    assert pos - block < end <= pos
    # What is sent tiles the request exactly, each part inside its read.
    sent = offset
    for roff, rlen, skip, payload in spans:
        assert roff + skip == sent
        assert payload > 0 and skip + payload <= rlen
        sent += payload
    assert sent == end
    # Only the first read skips, only the last is cut short.
    assert all(skip == 0 for _, _, skip, _ in spans[1:])
    assert all(skip + payload == rlen
               for _, rlen, skip, payload in spans[:-1])
