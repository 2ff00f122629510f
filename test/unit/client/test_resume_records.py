# SPDX-License-Identifier: GPL-2.0-or-later
"""
Resume in the copy engine and its records: skipping done ranges,
mid-copy checkpoints, the server's written ranges read in windows, and
the download sidecar.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_client_io import image, run_copy

from ovirt_imageio.backends.http_replies import parse_written
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.client import _resume
from ovirt_imageio.client._io import Checkpoints, Request, skip_done
from ovirt_imageio.client._resume import Record, ResumeError, Sidecar
from ovirt_imageio.transfer.ledger import Ledger
from ovirt_imageio.util.extents import WrittenExtent
from ovirt_imageio.util.rangeset import RangeSet

MiB = 1024**2


# skip_done

@pytest.mark.parametrize("requests,done,expected", [
    # Nothing done: unchanged.
    ([Request("copy", 0, 10)], [], [Request("copy", 0, 10)]),
    # All done: one skip.
    ([Request("copy", 0, 10)], [(0, 10)], [Request("skip", 0, 10)]),
    # Done ranges cut requests; ops are kept outside them.
    ([Request("copy", 0, 10), Request("zero", 10, 10)], [(5, 15)],
     [Request("copy", 0, 5), Request("skip", 5, 5), Request("skip", 10, 5),
      Request("zero", 15, 5)]),
    # A done range covering several requests and past the end.
    ([Request("copy", 0, 4), Request("copy", 4, 4)], [(2, 100)],
     [Request("copy", 0, 2), Request("skip", 2, 2), Request("skip", 4, 4)]),
    # Skips stay skips.
    ([Request("skip", 0, 4)], [(0, 2)], [Request("skip", 0, 4)]),
    # Done ranges before and between requests.
    ([Request("copy", 10, 5), Request("copy", 20, 5)], [(0, 8), (15, 21)],
     [Request("copy", 10, 5), Request("skip", 20, 1),
      Request("copy", 21, 4)]),
])
def test_skip_done(requests: list[Request], done: list[tuple[int, int]],
                   expected: list[Request]) -> None:
    assert list(skip_done(requests, done)) == expected


@given(st.lists(st.tuples(st.sampled_from(["copy", "zero", "skip"]),
                          st.integers(1, 50)), max_size=20),
       st.lists(st.integers(0, 600), max_size=20))
def test_skip_done_covers_each_byte_once(
        ops: list[tuple[Any, int]], cuts: list[int]) -> None:
    requests = []
    pos = 0
    for op, n in ops:
        requests.append(Request(op, pos, n))
        pos += n
    points = sorted(set(cuts))
    done = RangeSet([(points[i], points[i + 1])
                     for i in range(0, len(points) - 1, 2)])
    out = list(skip_done(requests, done.ranges()))
    # Contiguous, same span.
    assert sum(r.length for r in out) == pos
    assert all(r.length > 0 for r in out)
    assert all(a.end == b.start for a, b in zip(out, out[1:], strict=False))

    def op_at(reqs: list[Request], i: int) -> str:
        return next(r.op for r in reqs if r.start <= i < r.end)

    for i in range(pos):
        was = op_at(requests, i)
        inside = any(s <= i < e for s, e in done.ranges())
        assert op_at(out, i) == ("skip" if inside else was)


# Checkpoints

def test_checkpoints_flush_and_record() -> None:
    dst = MemoryBackend(bytearray(100))
    saved: list[list[tuple[int, int]]] = []
    cp = Checkpoints(10, record=lambda r: saved.append(r.ranges()),
                     done=RangeSet([(90, 100)]))
    cp.skipped(Request("skip", 50, 10))
    cp.completed(Request("copy", 0, 6), dst)
    assert dst.flush_count == 0 and saved == []
    cp.completed(Request("copy", 6, 6), dst)
    # Due at 12 bytes: flushed first, then recorded what came before.
    assert dst.flush_count == 1
    assert saved == [[(0, 12), (50, 60), (90, 100)]]
    cp.completed(Request("zero", 12, 9), dst)
    assert dst.flush_count == 1
    cp.completed(Request("copy", 21, 1), dst)
    assert dst.flush_count == 2
    assert saved[-1] == [(0, 22), (50, 60), (90, 100)]


def test_checkpoints_flush_failure_records_nothing() -> None:
    dst = MemoryBackend(bytearray(10))
    dst.close()
    saved: list[RangeSet] = []
    cp = Checkpoints(1, record=saved.append)
    with pytest.raises(OSError, match="closed"):
        cp.completed(Request("copy", 0, 5), dst)
    assert saved == []


def test_checkpoints_invalid() -> None:
    with pytest.raises(ValueError):
        Checkpoints(0)


@pytest.mark.parametrize("workers", [1, 3])
def test_copy_resumed_with_checkpoints(workers: int) -> None:
    size = 8 * MiB
    src, extents = image(size, [(0, 3 * MiB, True), (3 * MiB, MiB, False),
                                (4 * MiB, 4 * MiB, True)])
    # What an interrupted copy left: its done ranges are there already
    # and must not be written again.
    dst = bytearray(size)
    done = [(MiB, 2 * MiB), (5 * MiB, 7 * MiB)]
    for s, e in done:
        dst[s:e] = src[s:e]
    saved: list[list[tuple[int, int]]] = []
    lock = threading.Lock()

    def record(r: RangeSet) -> None:
        with lock:
            saved.append(r.ranges())

    cp = Checkpoints(MiB, record=record, done=RangeSet(done))
    calls, _ = run_copy(src, list(extents), dst, max_workers=workers,
                        buffer_size=MiB, done=done, checkpoints=cp,
                        zero=False)
    assert dst == src
    written = RangeSet([(c[1], c[1] + c[2]) for c in calls
                        if c[0] == "write"])
    assert written.ranges() == [(0, MiB), (2 * MiB, 3 * MiB),
                                (4 * MiB, 5 * MiB), (7 * MiB, 8 * MiB)]
    # Checkpoints came; each record includes the done ranges.
    assert saved
    assert all(RangeSet(s + done).ranges() == RangeSet(s).ranges()
               for s in saved)


# The server's written ranges.

class LedgerServer:
    """The daemon's ledger, as the http backend gives it to the client."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.asked: list[tuple[int, int | None]] = []
        self.taken = 0

    def written_extents(self, start: int = 0, end: int | None = None
                        ) -> Iterator[WrittenExtent]:
        self.asked.append((start, end))
        length = None if end is None else end - start
        for ext in self.ledger.extents(start, length):
            self.taken += 1
            yield ext


def test_written_ranges() -> None:
    ledger = Ledger(100)
    ledger.add(5, 15)
    ledger.add(30, 45)
    ledger.add(90, 100)
    server = LedgerServer(ledger)
    ranges = list(_resume.written_ranges(server, 100))
    # In order, and nothing but the written ranges.
    assert ranges == [(5, 15), (30, 45), (90, 100)]
    assert server.asked == [(0, 100)]


def test_written_ranges_lazy() -> None:
    ledger = Ledger(100)
    ledger.add(0, 10)
    ledger.add(20, 30)
    server = LedgerServer(ledger)
    it = _resume.written_ranges(server, 100)
    assert server.asked == []
    assert next(it) == (0, 10)
    # Only as far as the consumer got.
    assert server.taken == 1


def test_written_ranges_server_image_smaller() -> None:
    ledger = Ledger(30)
    ledger.add(20, 30)
    server = LedgerServer(ledger)
    assert list(_resume.written_ranges(server, 100)) == [(20, 30)]


@pytest.mark.parametrize("items,start,expected", [
    ([{"start": 10, "length": 5, "written": True},
      {"start": 15, "length": 10, "written": False}], 10,
     [WrittenExtent(10, 5, True), WrittenExtent(15, 10, False)]),
    ([{"start": 0, "length": 30, "written": False}], 0,
     [WrittenExtent(0, 30, False)]),
    ([], 10, []),
])
def test_parse_written(items: Any, start: int,
                       expected: list[WrittenExtent]) -> None:
    assert parse_written(items, start) == expected


@pytest.mark.parametrize("items", [
    {"start": 0},
    [{"start": 5, "length": 5, "written": True}],
    [{"start": 0, "length": 5, "written": True},
     {"start": 6, "length": 5, "written": True}],
    [{"start": 0, "length": 5, "written": "yes"}],
    [{"start": 0, "length": -1, "written": True}],
])
def test_parse_written_invalid(items: Any) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_written(items, 0)


# The download sidecar.

def test_sidecar_round_trip(tmp_path: Any) -> None:
    target = str(tmp_path / "out.raw")
    sidecar = Sidecar(target)
    assert sidecar.path == target + ".imageio-resume"
    assert sidecar.load() is None
    sidecar.save(Record("raw", 100, RangeSet([(0, 10), (50, 60)])))
    record = sidecar.load()
    assert record is not None
    assert (record.fmt, record.size, record.done.ranges()) == (
        "raw", 100, [(0, 10), (50, 60)])
    # Replaced whole, no temporary files left.
    sidecar.save(Record("raw", 100, RangeSet([(0, 20)])))
    assert os.listdir(tmp_path) == ["out.raw.imageio-resume"]
    record = sidecar.load()
    assert record is not None and record.done.ranges() == [(0, 20)]
    assert stat.S_IMODE(os.stat(sidecar.path).st_mode) & 0o077 == 0
    sidecar.remove()
    assert not sidecar.exists()
    sidecar.remove()


def _tamper(path: str, change: Any) -> None:
    with open(path) as f:
        outer = json.load(f)
    outer = change(outer)
    with open(path, "w") as f:
        f.write(outer if isinstance(outer, str) else json.dumps(outer))


def _resign(body: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(body)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(),
            "record": text}


@pytest.mark.parametrize("change", [
    lambda o: "{not json",
    lambda o: dict(o, record=o["record"].replace("100", "101")),
    lambda o: _resign(dict(json.loads(o["record"]), version=2)),
    lambda o: _resign(dict(json.loads(o["record"]), format="vmdk")),
    lambda o: _resign(dict(json.loads(o["record"]), done=[[20, 10]])),
    lambda o: _resign(dict(json.loads(o["record"]), done=[[0, 200]])),
    lambda o: _resign(dict(json.loads(o["record"]),
                           done=[[50, 60], [0, 10]])),
    lambda o: _resign(dict(json.loads(o["record"]), size="100")),
])
def test_sidecar_damaged(tmp_path: Any, change: Any) -> None:
    sidecar = Sidecar(str(tmp_path / "out.raw"))
    sidecar.save(Record("raw", 100, RangeSet([(0, 10), (50, 60)])))
    _tamper(sidecar.path, change)
    with pytest.raises(ResumeError, match="Damaged resume record"):
        sidecar.load()


@pytest.mark.parametrize("fmt,size,file_size,match", [
    ("qcow2", 100, 100, "as raw, not qcow2"),
    ("raw", 200, 100, "not the same image"),
    ("raw", 100, 50, "has 50 bytes"),
    ("raw", 100, None, "is missing"),
])
def test_check_mismatch(tmp_path: Any, fmt: str, size: int,
                        file_size: int | None, match: str) -> None:
    target = str(tmp_path / "out.raw")
    if file_size is not None:
        with open(target, "wb") as f:
            f.truncate(file_size)
    with pytest.raises(ResumeError, match=match):
        _resume.check(Record("raw", 100, RangeSet()), target, fmt, size)


def test_check_ok(tmp_path: Any) -> None:
    target = str(tmp_path / "out.raw")
    with open(target, "wb") as f:
        f.truncate(100)
    _resume.check(Record("raw", 100, RangeSet()), target, "raw", 100)

