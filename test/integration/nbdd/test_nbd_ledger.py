# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD door's writes and zeroes enter the ticket's ledger: the HTTP
``written`` context shows them, so an upload started through the door
(nbdcopy, qemu-img) can be resumed over HTTP, and a failed write enters
nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Iterator

import pytest

from support.daemon_util import NBD_DOOR_CONF, Daemon, request, running

nbd = pytest.importorskip("nbd")

MiB = 1024**2
SIZE = 8 * MiB

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("nbd-ledger-daemon"),
                 extra_conf=NBD_DOOR_CONF, tls=False) as d:
        yield d


def add_ticket(d: Daemon, path: Any, ops: list[str]) -> str:
    ticket = {"uuid": str(uuid.uuid4()), "size": SIZE,
              "url": f"file://{path}", "timeout": 300, "ops": ops}
    d.add_ticket(ticket)
    return str(ticket["uuid"])


def written(d: Daemon, tid: str) -> list[tuple[int, int, bool]]:
    conn = d.local()
    try:
        r = request(conn, "GET", f"/images/{tid}/extents?context=written")
        body = r.read()
        assert r.status == 200, body
        return [(e["start"], e["length"], e["written"])
                for e in json.loads(body)]
    finally:
        conn.close()


def connect(d: Daemon, tid: str) -> Any:
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///{tid}?socket={d.config['nbd']['socket']}")
    return h


def test_writes_and_zeroes_enter_the_ledger(daemon: Daemon,
                                            tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(b"\0" * SIZE)
    tid = add_ticket(daemon, img, ["read", "write"])
    h = connect(daemon, tid)
    try:
        h.pwrite(os.urandom(MiB), MiB)
        h.pwrite(os.urandom(MiB), 2 * MiB)
        h.zero(MiB, 5 * MiB)
        h.flush()
    finally:
        h.shutdown()
    assert written(daemon, tid) == [
        (0, MiB, False), (MiB, 2 * MiB, True), (3 * MiB, 2 * MiB, False),
        (5 * MiB, MiB, True), (6 * MiB, 2 * MiB, False)]


def test_refused_write_enters_nothing(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(b"\0" * SIZE)
    tid = add_ticket(daemon, img, ["read"])
    h = connect(daemon, tid)
    try:
        with pytest.raises(nbd.Error):
            h.pwrite(b"x" * 4096, 0)
    finally:
        h.shutdown()
    assert written(daemon, tid) == [(0, SIZE, False)]
