# SPDX-License-Identifier: GPL-2.0-or-later
"""Hash-on-write bookkeeping: which blocks have digests, and that they
are the digests a full read would compute."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer.digests import BlockDigests
from ovirt_imageio.util import blkhash

ALG = "sha256"


def truth(image: bytes, index: int, bs: int) -> bytes:
    return blkhash.block_digest(ALG, image[index * bs:(index + 1) * bs])


def write(d: BlockDigests, image: bytearray, offset: int, data: bytes,
          pieces: int = 1, ok: bool = True) -> None:
    h = d.writing(offset, len(data))
    step = max(1, -(-len(data) // pieces))
    for i in range(0, len(data), step):
        h.update(data[i:i + step])
    image[offset:offset + len(data)] = data
    if ok:
        h.commit()
    else:
        h.abort()


@pytest.mark.parametrize("offset, length, known", [
    (0, 16, {0, 1, 2, 3}),
    (0, 18, {0, 1, 2, 3, 4}),     # to the end, short last block included
    (1, 15, {1, 2, 3}),           # head of block 0 missing
    (0, 15, {0, 1, 2}),           # tail of block 3 missing
    (5, 2, set()),                # inside one block
    (16, 2, {4}),                 # the short last block alone
    (4, 4, {1}),
])
def test_whole_blocks_only(offset: int, length: int, known: set[int]) -> None:
    d = BlockDigests(ALG, 4, 18)
    image = bytearray(18)
    write(d, image, offset, bytes(range(1, length + 1)))
    assert {i for i in range(d.blocks) if d.digest(i)} == known
    for i in known:
        assert d.digest(i) == truth(bytes(image), i, 4)


def test_failed_write_forgets() -> None:
    d = BlockDigests(ALG, 4, 16)
    image = bytearray(16)
    write(d, image, 0, b"a" * 16)
    assert d.known() == 4
    write(d, image, 2, b"b" * 4, ok=False)
    assert [i for i in range(4) if d.digest(i)] == [2, 3]


@pytest.mark.parametrize("order", [
    ("first", "second"), ("second", "first")])
def test_overlapping_writes_leave_block_unknown(
        order: tuple[str, str]) -> None:
    # Which of two overlapping writes reached storage last is unknown, so
    # the block they share keeps no digest, whatever the commit order.
    d = BlockDigests(ALG, 4, 8)
    hashers = {"first": d.writing(0, 8), "second": d.writing(4, 4)}
    hashers["first"].update(b"x" * 8)
    hashers["second"].update(b"y" * 4)
    for name in order:
        hashers[name].commit()
    assert d.digest(0) == blkhash.block_digest(ALG, b"x" * 4)
    assert d.digest(1) is None
    # Once both ended, the next write hashes the block again.
    h = d.writing(4, 4)
    h.update(b"z" * 4)
    h.commit()
    assert d.digest(1) == blkhash.block_digest(ALG, b"z" * 4)


def test_zero_during_write_keeps_no_digest() -> None:
    d = BlockDigests(ALG, 4, 8)
    h = d.writing(0, 8)
    d.zeroed(0, 8)
    h.update(b"x" * 8)
    h.commit()
    assert d.digest(0) is None and d.digest(1) is None


def test_zeroed() -> None:
    d = BlockDigests(ALG, 4, 10)
    image = bytearray(b"z" * 10)
    write(d, image, 0, b"q" * 10)
    d.zeroed(2, 8)
    assert d.digest(0) is None
    assert d.digest(1) == blkhash.block_digest(ALG, bytes(4))
    assert d.digest(2) == blkhash.block_digest(ALG, bytes(2))


@given(st.lists(st.tuples(st.sampled_from(["write", "zero", "fail"]),
                          st.integers(0, 40), st.integers(0, 20),
                          st.integers(1, 5)), max_size=12))
def test_known_digests_are_true(ops: list[tuple[str, int, int, int]]
                                ) -> None:
    size, bs = 37, 4
    d = BlockDigests(ALG, bs, size)
    image = bytearray(size)
    for n, (op, offset, length, pieces) in enumerate(ops):
        offset = min(offset, size)
        length = min(length, size - offset)
        if op == "zero":
            d.zeroed(offset, length)
            image[offset:offset + length] = bytes(length)
        else:
            data = bytes([n + 1]) * length
            write(d, image, offset, data, pieces, ok=op == "write")
    for i in range(d.blocks):
        digest = d.digest(i)
        if digest is not None:
            assert digest == truth(bytes(image), i, bs)
