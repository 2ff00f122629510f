# SPDX-License-Identifier: GPL-2.0-or-later
"""Streaming one range through one request (client._stream), no network."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ovirt_imageio.backends import base
from ovirt_imageio.client import _stream


class _ThreadedReader:
    """Yields data in short reads, recording the calling threads."""

    def __init__(self, data: bytes, limit: int | None = None) -> None:
        self.data = data
        self.pos = 0
        self.limit = limit
        self.threads: set[str] = set()

    def readinto(self, buf: memoryview) -> int:
        self.threads.add(threading.current_thread().name)
        n = min(len(buf), len(self.data) - self.pos, 300_000)
        if self.limit is not None:
            n = min(n, max(0, self.limit - self.pos))
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_send_overlapped_order_and_threads() -> None:
    data = os.urandom(3 * 1024**2 + 5)
    reader = _ThreadedReader(data)
    bufs = (memoryview(bytearray(1024**2)), memoryview(bytearray(1024**2)))
    sent = bytearray()
    with ThreadPoolExecutor(1, thread_name_prefix="helper") as ex:
        _stream._send(reader, len(data), bufs, ex.submit, sent.extend)
    assert sent == data
    # Reads ran on the helper thread only, never on the sender's.
    assert all(t.startswith("helper") for t in reader.threads)


def test_send_overlapped_short_reader() -> None:
    reader = _ThreadedReader(b"x" * 1000, limit=600)
    bufs = (memoryview(bytearray(4096)), memoryview(bytearray(4096)))
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(base.BackendError,
                           match="Reader ended after 600 of 1000 bytes"):
            _stream._send(reader, 1000, bufs, ex.submit, lambda b: None)


def test_send_overlapped_send_failure_waits_for_read() -> None:
    release = threading.Event()
    finished = threading.Event()

    class SlowReader:
        calls = 0

        def readinto(self, buf: memoryview) -> int:
            SlowReader.calls += 1
            if SlowReader.calls == 2:
                # Still filling the spare buffer when the send fails.
                release.wait(10)
                finished.set()
            buf[:] = b"y" * len(buf)
            return len(buf)

    def send(chunk: memoryview) -> None:
        release.set()
        raise ConnectionResetError("peer gone")

    bufs = (memoryview(bytearray(100)), memoryview(bytearray(100)))
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(ConnectionResetError):
            _stream._send(SlowReader(), 1000, bufs, ex.submit, send)
        # Returned only after the read into the spare buffer ended.
        assert finished.is_set()
