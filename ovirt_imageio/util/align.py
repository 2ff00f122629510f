# SPDX-License-Identifier: GPL-2.0-or-later
"""
Block alignment: rounding offsets, and cutting a byte range at block
boundaries.

Storage that works in blocks (O_DIRECT files, NBD servers with a minimum
block size) can take a whole aligned block as is, but a range that starts
or ends inside a block needs that block read, modified and written back.
``split`` cuts any range into the three parts every such caller handles
differently:

- the head: from the start of the range to the first block boundary,
  empty when the range starts aligned; shorter than a block, and lying
  inside one block;
- the middle: whole blocks, starting and ending on boundaries;
- the tail: from the last boundary to the end of the range, empty when
  the range ends aligned (or ends inside the head's block); shorter than a
  block, starting at the start of its block.

The three parts tile the range exactly, in order. A range inside one
block that starts unaligned is all head.

>>> s = split(100, 1000, 512)
>>> s
Split(offset=100, head=412, middle=512, tail=76, block=512)
>>> s.head_block, s.skip, s.middle_offset, s.tail_offset
(0, 100, 512, 1024)
"""

from __future__ import annotations

from typing import NamedTuple


def round_down(n: int, block: int) -> int:
    """
    The largest multiple of block not above n.

    >>> round_down(1000, 512)
    512
    """
    return n - n % block


def round_up(n: int, block: int) -> int:
    """
    The smallest multiple of block not below n.

    >>> round_up(1000, 512)
    1024
    """
    return n + (-n % block)


class Split(NamedTuple):
    """A range cut into head, middle and tail; see the module docstring."""

    offset: int
    head: int
    middle: int
    tail: int
    block: int

    @property
    def head_block(self) -> int:
        """Start of the block holding the head."""
        return round_down(self.offset, self.block)

    @property
    def skip(self) -> int:
        """Where the head starts inside its block."""
        return self.offset - self.head_block

    @property
    def middle_offset(self) -> int:
        """Start of the middle (aligned whenever middle or tail is set)."""
        return self.offset + self.head

    @property
    def tail_offset(self) -> int:
        """Start of the tail, and of its block."""
        return self.offset + self.head + self.middle


def split(offset: int, length: int, block: int) -> Split:
    """
    Cut [offset, offset + length) at multiples of block.

    >>> split(0, 1024, 512)
    Split(offset=0, head=0, middle=1024, tail=0, block=512)
    >>> split(700, 100, 512)
    Split(offset=700, head=100, middle=0, tail=0, block=512)
    >>> split(1024, 100, 512)
    Split(offset=1024, head=0, middle=0, tail=100, block=512)
    """
    if offset < 0 or length < 0:
        raise ValueError(f"Invalid range: offset={offset} length={length}")
    if block < 1:
        raise ValueError(f"Invalid block size: {block}")
    head = min(length, -offset % block)
    middle = round_down(length - head, block)
    return Split(offset, head, middle, length - head - middle, block)
