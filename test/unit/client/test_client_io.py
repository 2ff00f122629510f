# SPDX-License-Identifier: GPL-2.0-or-later
"""The copy engine: request planning, workers, errors, progress."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends.http_retry import Retry
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.client import _io
from ovirt_imageio.client._io import Request, plan
from ovirt_imageio.util.extents import DirtyExtent, Extent, ZeroExtent

MiB = 1024**2


@pytest.mark.parametrize("extent,kw,expected", [
    # Data is always copied.
    (ZeroExtent(0, 8, False, False), {}, [Request("copy", 0, 8)]),
    # Zeros are zeroed unless the target is known to be zero.
    (ZeroExtent(0, 8, True, False), {}, [Request("zero", 0, 8)]),
    (ZeroExtent(0, 8, True, False), {"zero": False},
     [Request("skip", 0, 8)]),
    # Holes: zeroed in a full copy, left alone in a shallow one.
    (ZeroExtent(0, 8, True, True), {}, [Request("zero", 0, 8)]),
    (ZeroExtent(0, 8, True, True), {"hole": False},
     [Request("skip", 0, 8)]),
    (ZeroExtent(0, 8, True, False), {"hole": False},
     [Request("zero", 0, 8)]),
    # Dirty context: only dirty ranges move; dirty zeros are zeroed.
    (DirtyExtent(0, 8, True, False), {}, [Request("copy", 0, 8)]),
    (DirtyExtent(0, 8, True, True), {"zero": False},
     [Request("zero", 0, 8)]),
    (DirtyExtent(0, 8, False, False), {}, [Request("skip", 0, 8)]),
    (DirtyExtent(0, 8, False, True), {}, [Request("skip", 0, 8)]),
    # Requests are split at multiples of max_request, so they cover whole
    # blocks of sizes dividing it; skips are not split (no I/O).
    (ZeroExtent(2, 10, False, False), {"max_request": 4},
     [Request("copy", 2, 2), Request("copy", 4, 4), Request("copy", 8, 4)]),
    (ZeroExtent(4, 8, True, False), {"max_request": 4},
     [Request("zero", 4, 4), Request("zero", 8, 4)]),
    (ZeroExtent(0, 10, True, False), {"max_request": 4, "zero": False},
     [Request("skip", 0, 10)]),
])
def test_plan(extent: Extent, kw: dict[str, Any],
              expected: list[Request]) -> None:
    assert list(plan([extent], **kw)) == expected


@st.composite
def zero_extents(draw: Any) -> list[ZeroExtent]:
    lengths = draw(st.lists(st.integers(1, 100), max_size=20))
    result = []
    start = 0
    for length in lengths:
        zero = draw(st.booleans())
        hole = zero and draw(st.booleans())
        result.append(ZeroExtent(start, length, zero, hole))
        start += length
    return result


@given(zero_extents(), st.integers(1, 50), st.booleans(), st.booleans())
def test_plan_covers_image(extents: list[ZeroExtent], max_request: int,
                           zero: bool, hole: bool) -> None:
    requests = list(plan(extents, zero=zero, hole=hole,
                         max_request=max_request))
    pos = 0
    for req in requests:
        assert req.start == pos
        assert req.length > 0
        if req.op != "skip":
            assert req.length <= max_request
        pos = req.end
    assert pos == sum(e.length for e in extents)
    # Data is never skipped nor zeroed.
    for ext in extents:
        ops = {r.op for r in requests
               if ext.start <= r.start < ext.end}
        if not ext.zero:
            assert ops == {"copy"}
        else:
            assert "copy" not in ops


# The engine with memory backends.

def image(size: int, pattern: list[tuple[int, int, bool]]
          ) -> tuple[bytearray, list[ZeroExtent]]:
    """An image with data where pattern says so, and its extents."""
    data = bytearray(size)
    extents = []
    for start, length, is_data in pattern:
        if is_data:
            data[start:start + length] = bytes([start // 4096 % 250 + 1]
                                               ) * length
        extents.append(ZeroExtent(start, length, not is_data, False))
    return data, extents


class Recorder(MemoryBackend):
    """A memory backend recording the calls that change it."""

    def __init__(self, data: bytearray, calls: list[tuple[Any, ...]],
                 lock: threading.Lock, fail_at: int | None = None) -> None:
        super().__init__(data)
        self.calls = calls
        self.lock = lock
        self.fail_at = fail_at

    def write(self, offset: int, buf: memoryview) -> None:
        if self.fail_at is not None and offset <= self.fail_at < offset + \
                len(buf):
            raise OSError(5, f"write failed at {offset}")
        with self.lock:
            self.calls.append(("write", offset, len(buf)))
        super().write(offset, buf)

    def zero(self, offset: int, length: int) -> None:
        with self.lock:
            self.calls.append(("zero", offset, length))
        super().zero(offset, length)

    def flush(self) -> None:
        with self.lock:
            self.calls.append(("flush",))
        super().flush()


class Progress:
    def __init__(self) -> None:
        self.size: int | None = None
        self.done = 0
        self.lock = threading.Lock()

    def update(self, n: int) -> None:
        with self.lock:
            self.done += n


def run_copy(src_data: bytearray, extents: list[Extent], dst_data: bytearray,
             *, fail_at: int | None = None, **kw: Any
             ) -> tuple[list[tuple[Any, ...]], list[Recorder]]:
    calls: list[tuple[Any, ...]] = []
    lock = threading.Lock()
    dsts: list[Recorder] = []

    def open_src() -> MemoryBackend:
        return MemoryBackend(src_data, "r", extents=extents)

    def open_dst() -> Recorder:
        d = Recorder(dst_data, calls, lock, fail_at)
        dsts.append(d)
        return d

    src = open_src()
    dst = open_dst()
    _io.copy(src, dst, open_src=open_src, open_dst=open_dst, **kw)
    return calls, dsts


@pytest.mark.parametrize("workers", [1, 3])
def test_copy_sparse(workers: int) -> None:
    size = 10 * MiB
    src, extents = image(size, [(0, MiB, True), (MiB, 3 * MiB, False),
                                (4 * MiB, 5 * MiB, True),
                                (9 * MiB, MiB, False)])
    dst = bytearray(b"x" * size)
    progress = Progress()
    calls, dsts = run_copy(src, list(extents), dst, max_workers=workers,
                           buffer_size=MiB, progress=progress)
    assert dst == src
    # Zero ranges went as zero requests, never as data.
    writes = [c for c in calls if c[0] == "write"]
    assert all(not (MiB <= c[1] < 4 * MiB) for c in writes)
    assert sum(c[2] for c in writes) == 6 * MiB
    assert sorted(c for c in calls if c[0] == "zero") == [
        ("zero", MiB, 3 * MiB), ("zero", 9 * MiB, MiB)]
    # One flush per worker; one destination connection per worker.
    assert calls.count(("flush",)) == workers
    assert len(dsts) == workers
    assert progress.size == size
    assert progress.done == size


def test_copy_target_is_zero() -> None:
    size = 4 * MiB
    src, extents = image(size, [(0, MiB, True), (MiB, 3 * MiB, False)])
    dst = bytearray(size)
    calls, _ = run_copy(src, list(extents), dst, zero=False)
    assert dst == src
    assert not [c for c in calls if c[0] == "zero"]


def test_copy_dirty() -> None:
    size = 4 * MiB
    src = bytearray(b"n" * size)
    dst = bytearray(b"o" * size)
    extents: list[Extent] = [
        DirtyExtent(0, MiB, dirty=False, zero=False),
        DirtyExtent(MiB, MiB, dirty=True, zero=False),
        DirtyExtent(2 * MiB, MiB, dirty=True, zero=True),
        DirtyExtent(3 * MiB, MiB, dirty=False, zero=False),
    ]
    src[2 * MiB:3 * MiB] = bytes(MiB)
    calls, _ = run_copy(src, extents, dst, dirty=True)
    assert dst == b"o" * MiB + b"n" * MiB + bytes(MiB) + b"o" * MiB
    assert ("zero", 2 * MiB, MiB) in calls


def test_copy_legacy_progress_callable() -> None:
    src, extents = image(MiB, [(0, MiB, True)])
    seen: list[int] = []
    run_copy(src, list(extents), bytearray(MiB), progress=seen.append)
    assert sum(seen) == MiB


def copy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("copy/")]


def test_copy_error_aborts_all() -> None:
    size = 64 * MiB
    src, extents = image(size, [(i * MiB, MiB, i % 2 == 0)
                                for i in range(64)])
    dst = bytearray(size)
    with pytest.raises(OSError, match="write failed"):
        run_copy(src, list(extents), dst, fail_at=10 * MiB, max_workers=2,
                 buffer_size=MiB)
    assert not copy_threads()


def test_copy_error_no_flush() -> None:
    src, extents = image(4 * MiB, [(0, 4 * MiB, True)])
    calls: list[tuple[Any, ...]] = []
    with pytest.raises(OSError):
        calls, _ = run_copy(src, list(extents), bytearray(4 * MiB),
                            fail_at=0, max_workers=1)
    assert ("flush",) not in calls


def test_copy_interrupted_in_caller() -> None:
    """An exception in the calling thread (Ctrl-C) stops the workers."""
    size = 8 * MiB
    src, extents = image(size, [(0, size, True)])

    class Interrupting(MemoryBackend):
        def extents(self, context: str = "zero", start: int = 0,
                    end: int | None = None) -> Iterator[Extent]:
            yield ZeroExtent(0, MiB, False, False)
            raise KeyboardInterrupt

    s = Interrupting(src, "r")
    d = MemoryBackend(bytearray(size))
    with pytest.raises(KeyboardInterrupt):
        _io.copy(s, d, open_src=lambda: MemoryBackend(src, "r"),
                 open_dst=lambda: MemoryBackend(bytearray(size)),
                 max_workers=2)
    assert not copy_threads()
    # The caller's destination stays open; nothing was flushed.
    assert d.flush_count == 0
    d.size()


def test_copy_opener_error() -> None:
    src, extents = image(MiB, [(0, MiB, True)])

    def fail() -> MemoryBackend:
        raise ConnectionRefusedError("no server")

    with pytest.raises(ConnectionRefusedError):
        _io.copy(MemoryBackend(src, "r", extents=extents),
                 MemoryBackend(bytearray(MiB)), open_src=fail,
                 open_dst=fail, max_workers=2)
    assert not copy_threads()


class Streaming(MemoryBackend):
    """A destination streaming PUTs, like the http backend."""

    def __init__(self, data: bytearray) -> None:
        super().__init__(data)
        self.streamed: list[tuple[int, int]] = []
        self.senders: set[str] = set()

    def put_stream(self, offset: int, length: int, send: Any,
                   repeatable: bool = False, resend: Any = None) -> None:
        self.streamed.append((offset, length))
        done = 0

        def send_data(chunk: memoryview) -> None:
            nonlocal done
            self.senders.add(threading.current_thread().name)
            self.write(offset + done, chunk)
            done += len(chunk)

        send(send_data)
        assert done == length


class ThreadedSource(MemoryBackend):
    """A source recording the threads reading it."""

    def __init__(self, data: bytearray) -> None:
        super().__init__(data, "r")
        self.readers: set[str] = set()

    def readinto(self, offset: int, buf: memoryview) -> int:
        self.readers.add(threading.current_thread().name)
        return super().readinto(offset, buf)


def test_copy_streams_to_http_like_destination() -> None:
    size = 3 * MiB
    src, extents = image(size, [(0, size, True)])
    dst = Streaming(bytearray(size))
    reader = ThreadedSource(src)
    _io.copy(MemoryBackend(src, "r", extents=extents), dst,
             open_src=lambda: reader, open_dst=lambda: dst, max_workers=1,
             buffer_size=MiB)
    # One streaming request for the whole range, fed through the buffer.
    assert dst.streamed == [(0, size)]
    assert dst.data == src
    # The worker's helper thread read the source while the worker sent:
    # the second buffer and the helper were offered.
    assert reader.readers and dst.senders
    assert not reader.readers & dst.senders
    assert all(name.endswith("/io_0") for name in reader.readers)


class Retrying(Streaming):
    """A streaming destination that retries, like a client http backend."""

    retry = Retry(retries=3)

    def __init__(self, data: bytearray) -> None:
        super().__init__(data)
        self.writes: list[tuple[int, int]] = []

    def write(self, offset: int, buf: memoryview) -> None:
        self.writes.append((offset, len(buf)))
        self.senders.add(threading.current_thread().name)
        super().write(offset, buf)


@pytest.mark.parametrize("buffer_size", [MiB, 16 * MiB])
def test_copy_to_retrying_destination_in_pieces(buffer_size: int) -> None:
    # A destination that sends failed requests again gets one write per
    # piece of at most RESEND_REQUEST (a cut costs one piece), not one
    # stream per copy request; reading still overlaps sending.
    size = 3 * _io.RESEND_REQUEST + MiB
    src, extents = image(size, [(0, size, True)])
    dst = Retrying(bytearray(size))
    reader = ThreadedSource(src)
    _io.copy(MemoryBackend(src, "r", extents=extents), dst,
             open_src=lambda: reader, open_dst=lambda: dst, max_workers=1,
             buffer_size=buffer_size)
    assert dst.data == src
    assert dst.streamed == []
    piece = min(buffer_size, _io.RESEND_REQUEST)
    assert dst.writes == [(pos, min(piece, size - pos))
                          for pos in range(0, size, piece)]
    assert reader.readers and dst.senders
    assert not reader.readers & dst.senders


@pytest.mark.parametrize("workers,expected", [
    (1, 16 * MiB), (2, 8 * MiB), (3, 5 * MiB), (4, 4 * MiB), (8, 4 * MiB),
])
def test_deep_buffer_size_keeps_bytes_in_flight(workers: int,
                                                expected: int) -> None:
    assert _io.deep_buffer_size(workers) == expected


@pytest.mark.parametrize("buffer_size", [MiB, 16 * MiB])
def test_copy_buffer_size(buffer_size: int) -> None:
    size = 64 * MiB
    src = bytearray(b"d" * size)
    extents: list[Extent] = [ZeroExtent(0, size, False, False)]
    dst = bytearray(size)
    calls, _ = run_copy(src, extents, dst, max_workers=1,
                        buffer_size=buffer_size)
    assert dst == src
    assert max(c[2] for c in calls if c[0] == "write") == buffer_size


@pytest.mark.parametrize("workers", [0, -1])
def test_copy_invalid_workers(workers: int) -> None:
    with pytest.raises(ValueError):
        _io.copy(MemoryBackend(), MemoryBackend(), open_src=MemoryBackend,
                 open_dst=MemoryBackend, max_workers=workers)


@pytest.mark.parametrize("zero", [True, False])
def test_copy_detect_zeroes(zero: bool) -> None:
    """Zeros inside data extents are found per 64 KiB piece."""
    seg = _io.ZERO_SEGMENT
    size = 16 * seg
    src = bytearray(size)
    src[0:2 * seg] = b"a" * (2 * seg)
    src[5 * seg + 10:5 * seg + 11] = b"b"
    extents: list[Extent] = [ZeroExtent(0, size, False, False)]
    dst = bytearray(b"x" * size) if zero else bytearray(size)
    calls, _ = run_copy(src, extents, dst, zero=zero, detect_zeroes=True,
                        buffer_size=4 * seg, max_workers=1)
    assert dst == src
    writes = [c[1:] for c in calls if c[0] == "write"]
    zeros = [c[1:] for c in calls if c[0] == "zero"]
    # Data pieces in one write per buffer; zero pieces never written.
    assert writes == [(0, 2 * seg), (5 * seg, seg)]
    if zero:
        assert zeros == [(2 * seg, 2 * seg), (4 * seg, seg),
                         (6 * seg, 2 * seg), (8 * seg, 4 * seg),
                         (12 * seg, 4 * seg)]
    else:
        assert zeros == []


def test_plan_default_request_sizes() -> None:
    # Copies are split at MAX_REQUEST, zeros at the larger
    # MAX_ZERO_REQUEST (they move no data).
    size = 3 * _io.MAX_ZERO_REQUEST
    copies = list(_io.plan([ZeroExtent(0, size, False, False)]))
    zeros = list(_io.plan([ZeroExtent(0, size, True, False)]))
    assert {r.length for r in copies} == {_io.MAX_REQUEST}
    assert [r.length for r in zeros] == [_io.MAX_ZERO_REQUEST] * 3
    assert {r.op for r in zeros} == {"zero"}
