# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hash-on-write through the NBD door: writes and zeroes by a libnbd client
keep the ticket's block digests, so the HTTP checksum afterwards reads
only the blocks no request wrote whole, and answers as a full read.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Iterator

import pytest

from ovirt_imageio import client

from support.checksums import checksum
from support.daemon_util import NBD_DOOR_CONF, Daemon, running

nbd = pytest.importorskip("nbd")

MiB = 1024**2
BS = MiB
ALG = "sha256"
SIZE = 6 * MiB
QUERY = f"?algorithm={ALG}&block_size={BS}"

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("nbd-how-daemon"),
                 extra_conf=NBD_DOOR_CONF, tls=False) as d:
        yield d


def add_ticket(d: Daemon, path: Any, **kw: Any) -> str:
    ticket = {"uuid": str(uuid.uuid4()), "size": SIZE,
              "url": f"file://{path}", "timeout": 300,
              "ops": ["read", "write"], **kw}
    d.add_ticket(ticket)
    return str(ticket["uuid"])


def test_nbd_writes_keep_digests(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(os.urandom(SIZE))
    tid = add_ticket(daemon, img,
                     checksum={"algorithm": ALG, "block_size": BS})
    plain = add_ticket(daemon, img)
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///{tid}?socket={daemon.config['nbd']['socket']}")
    try:
        # Blocks 0-3 written whole in one request each, block 4 zeroed,
        # block 5 written in two halves: no request covers it whole.
        for offset in range(0, 4 * BS, BS):
            h.pwrite(os.urandom(BS), offset)
        h.zero(BS, 4 * BS)
        h.pwrite(os.urandom(BS // 2), 5 * BS)
        h.pwrite(os.urandom(BS // 2), 5 * BS + BS // 2)
        h.flush()
    finally:
        h.shutdown()
    value, read = checksum(daemon, tid, QUERY)
    assert read == BS
    full, read = checksum(daemon, plain, QUERY)
    assert read == SIZE - BS  # the zeroed block is a hole now
    assert value == full
    assert value == client.checksum(str(img), algorithm=ALG,
                                    block_size=BS)["checksum"]
