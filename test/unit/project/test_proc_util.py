# SPDX-License-Identifier: GPL-2.0-or-later
"""
The resource figures of support/proc_util.py, which the leak and load
tests compare and print.
"""

from __future__ import annotations

from support.proc_util import Resources

MiB = 1024**2


def test_resources_delta_is_printable() -> None:
    a = Resources(threads=5, fds=20, buffers=2 * MiB, rss=30 * MiB)
    b = Resources(threads=4, fds=18, buffers=0, rss=29 * MiB)
    assert a - b == Resources(1, 2, 2 * MiB, MiB)
    assert str(a) == "threads=5 fds=20 buffers=2048KiB rss=30.0MiB"

