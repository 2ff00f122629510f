# SPDX-License-Identifier: GPL-2.0-or-later
"""The written-range ledger: extents, durability, and its files."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer import ledger
from ovirt_imageio.transfer.ledger import DamagedLedger, Ledger, LedgerFiles
from ovirt_imageio.util.extents import WrittenExtent
from ovirt_imageio.util.rangeset import RangeSet


def items(led: Ledger, start: int = 0, length: int | None = None
          ) -> list[tuple[int, int, bool]]:
    return [(e.start, e.length, e.written)
            for e in led.extents(start, length)]


@pytest.mark.parametrize("writes, start, length, expected", [
    ([], 0, None, [(0, 100, False)]),
    ([(0, 100)], 0, None, [(0, 100, True)]),
    ([(10, 20)], 0, None, [(0, 10, False), (10, 10, True), (20, 80, False)]),
    ([(10, 20), (20, 30)], 0, None,
     [(0, 10, False), (10, 20, True), (30, 70, False)]),
    # Windows clip at both ends.
    ([(10, 20)], 15, 50, [(15, 5, True), (20, 45, False)]),
    ([(10, 20)], 0, 5, [(0, 5, False)]),
    ([(10, 20)], 12, 3, [(12, 3, True)]),
    ([(10, 20)], 90, 1000, [(90, 10, False)]),
    ([(0, 100)], 100, 10, []),
    # Writes past the end are clipped to the image.
    ([(90, 200)], 0, None, [(0, 90, False), (90, 10, True)]),
])
def test_extents(writes: list[tuple[int, int]], start: int,
                 length: int | None,
                 expected: list[tuple[int, int, bool]]) -> None:
    led = Ledger(100)
    for s, e in writes:
        led.add(s, e)
    assert items(led, start, length) == expected


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 300))),
       st.integers(0, 1100), st.integers(0, 1100))
def test_extents_tile_the_window(writes: list[tuple[int, int]], start: int,
                                 length: int) -> None:
    size = 1000
    led = Ledger(size)
    truth = RangeSet()
    for s, n in writes:
        led.add(s, s + n)
        truth.add(min(s, size), min(s + n, size))
    got = list(led.extents(start, length))
    end = min(size, start + length)
    # Ordered, gap-free, exactly the window, alternating kinds.
    pos = start
    for e in got:
        assert e.start == pos and e.length > 0
        pos = e.end
    assert pos == max(start, end) if got else start >= end
    for a, b in zip(got, got[1:], strict=False):
        assert a.written != b.written
    # Written exactly where a write landed.
    written = RangeSet((e.start, e.end) for e in got if e.written)
    window = RangeSet(
        (max(s, start), min(e, end)) for s, e in truth.ranges()
        if max(s, start) < min(e, end))
    assert written.ranges() == window.ranges()


def test_to_dict() -> None:
    assert WrittenExtent(5, 10, True).to_dict() == {
        "start": 5, "length": 10, "written": True}


def test_only_flushed_ranges_are_durable() -> None:
    led = Ledger(100)
    led.add(0, 10)
    snapshot = led.flushing()
    # Completes while the flush runs: not covered by it.
    led.add(10, 20)
    assert led.durable().ranges() == []
    led.flushed(snapshot)
    assert led.durable().ranges() == [(0, 10)]
    assert led.written() == 20


def test_restored_ledger_is_written_and_durable() -> None:
    led = Ledger(100, durable=RangeSet([(0, 50)]))
    assert items(led) == [(0, 50, True), (50, 50, False)]
    assert led.durable().ranges() == [(0, 50)]


@given(st.text(), st.integers(0, 2**63 - 1),
       st.lists(st.tuples(st.integers(0, 2**40), st.integers(1, 2**20))))
def test_encode_decode(url: str, size: int,
                       spans: list[tuple[int, int]]) -> None:
    ranges = RangeSet((s, s + n) for s, n in spans if s + n <= size)
    got_url, got_size, got = ledger.decode(ledger.encode(url, size, ranges))
    assert (got_url, got_size, got.ranges()) == (url, size, ranges.ranges())


GOOD = ledger.encode("file:///disk", 100, RangeSet([(0, 10), (20, 30)]))


@pytest.mark.parametrize("data, reason", [
    (b"", "malformed"),
    (GOOD[:-10], "malformed"),
    (GOOD.replace(b"30", b"31"), "checksum mismatch"),
    (b"[]", "malformed"),
    (b'{"sha256": 1}', "malformed"),
])
def test_damaged(data: bytes, reason: str) -> None:
    with pytest.raises(DamagedLedger) as e:
        ledger.decode(data)
    assert reason in str(e.value)


def forged(body: str) -> bytes:
    # A well-formed file with a matching checksum but a wrong body.
    return json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(),
                       "ledger": body}).encode()


@pytest.mark.parametrize("body, reason", [
    ('{"version":2,"url":"u","size":9,"ranges":[]}', "unknown version"),
    ('{"version":1,"url":"u","size":9,"ranges":[[0,10]]}', "invalid range"),
    ('{"version":1,"url":"u","size":9,"ranges":[[5,5]]}', "invalid range"),
    ('{"version":1,"url":"u","size":9,"ranges":[[-1,5]]}', "invalid range"),
    ('{"version":1,"url":"u","size":9,"ranges":[[0,true]]}',
     "invalid range"),
    ('{"version":1,"url":"u","size":-1,"ranges":[]}', "invalid url"),
    ('{"version":1,"url":3,"size":9,"ranges":[]}', "invalid url"),
    ('{"version":1,"url":"u","size":9,"ranges":[[0]]}', "malformed"),
    ('{"version":1,"url":"u","size":9}', "malformed"),
])
def test_forged(body: str, reason: str) -> None:
    with pytest.raises(DamagedLedger) as e:
        ledger.decode(forged(body))
    assert reason in str(e.value)


# Files.


def test_files_save_load_remove(tmp_path: pathlib.Path) -> None:
    files = LedgerFiles(str(tmp_path))
    ticket_id = "0123456789abcdef-secret"
    files.save(ticket_id, "file:///disk", 100, RangeSet([(0, 10)]))
    names = os.listdir(tmp_path)
    assert len(names) == 1
    assert "0123" not in names[0] and "secret" not in names[0]
    mode = os.stat(files.path(ticket_id)).st_mode
    assert stat.S_IMODE(mode) == 0o600
    loaded = files.load(ticket_id, "file:///disk", 100)
    assert loaded is not None and loaded.ranges() == [(0, 10)]
    # Another image under the same id starts empty.
    assert files.load(ticket_id, "file:///other", 100) is None
    assert files.load(ticket_id, "file:///disk", 200) is None
    files.remove(ticket_id)
    assert os.listdir(tmp_path) == []
    files.remove(ticket_id)
    assert files.load(ticket_id, "file:///disk", 100) is None


def test_files_replace(tmp_path: pathlib.Path) -> None:
    files = LedgerFiles(str(tmp_path))
    files.save("t", "u", 100, RangeSet([(0, 10)]))
    files.save("t", "u", 100, RangeSet([(0, 20)]))
    loaded = files.load("t", "u", 100)
    assert loaded is not None and loaded.ranges() == [(0, 20)]
    assert os.listdir(tmp_path) == [os.path.basename(files.path("t"))]


def test_damaged_file_ignored_with_warning(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    files = LedgerFiles(str(tmp_path))
    files.save("t", "u", 100, RangeSet([(0, 10)]))
    path = files.path("t")
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"X")
    assert files.load("t", "u", 100) is None
    assert "Ignoring damaged ledger" in caplog.text
