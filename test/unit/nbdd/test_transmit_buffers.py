# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import threading

import pytest

from ovirt_imageio.native import ioutil
from ovirt_imageio.nbdd.transmit import HEADROOM, Buffers


def test_take_has_headroom_and_is_aligned() -> None:
    bufs = Buffers(1024**2)
    buf = bufs.take(1000)
    assert len(buf) == 8192
    view = memoryview(buf)
    assert ioutil.buffer_address(view[HEADROOM:]) % 4096 == 0
    view.release()
    bufs.give(buf)
    bufs.close()


def test_buffers_are_reused() -> None:
    bufs = Buffers(1024**2)
    first = bufs.take(4096)
    bufs.give(first)
    assert bufs.take(4096) is first
    bufs.close()


def test_request_over_budget_runs_alone() -> None:
    bufs = Buffers(16384)
    big = bufs.take(65536)
    assert len(big) == 65536 + HEADROOM
    bufs.give(big)
    bufs.close()


def test_take_waits_for_budget() -> None:
    bufs = Buffers(16384)
    held = bufs.take(8192)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(bufs.take(8192)))
    t.start()
    # 8 KiB + headroom twice is over the budget: the second take returns
    # once the first buffer is given back (it may or may not have started
    # waiting by then).
    bufs.give(held)
    t.join()
    assert len(got) == 1
    bufs.close()


def test_close_fails_waiting_takers() -> None:
    bufs = Buffers(8192)
    bufs.take(4096)
    errors: list[BaseException] = []

    def take() -> None:
        try:
            bufs.take(4096)
        except ConnectionAbortedError as e:
            errors.append(e)

    t = threading.Thread(target=take)
    t.start()
    bufs.close()
    t.join()
    assert len(errors) == 1
    with pytest.raises(ConnectionAbortedError):
        bufs.take(1)
