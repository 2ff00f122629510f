# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hash-on-write through a real daemon: the ``checksum`` ticket field, what
``GET /images/{id}/checksum`` reads from storage afterwards (the
``ovirt_imageio_backend_bytes_total{op="checksum"}`` counter), and that
its answer is the answer of a full read: of a second ticket on the same
file without the field, and of ``client.checksum`` of the file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ovirt_imageio import client

from support import checksums
from support.checksums import checksum_counts, checksum_read
from support.daemon_util import PKI, Daemon, put_chunked, request

MiB = 1024**2
BS = MiB
ALG = "sha256"
# Eight whole blocks and a short one.
SIZE = 8 * MiB + 8192
HASH = {"algorithm": ALG, "block_size": BS}
QUERY = f"?algorithm={ALG}&block_size={BS}"


def checksum(d: Daemon, ticket_id: str, query: str = QUERY
             ) -> tuple[str, int]:
    return checksums.checksum(d, ticket_id, query)
CA = os.path.join(PKI, "ca.pem")

MakeTicket = Callable[..., dict[str, Any]]


def full_read(d: Daemon, ticket: dict[str, Any]) -> str:
    """The checksum of a ticket on the same file without hash-on-write,
    checked against the client library's checksum of the file."""
    other = {k: v for k, v in ticket.items() if k != "checksum"}
    other["uuid"] = str(uuid.uuid4())
    d.add_ticket(other)
    try:
        value, read = checksum(d, other["uuid"])
    finally:
        d.control("DELETE", f"/tickets/{other['uuid']}")
    local = client.checksum(ticket["_path"], algorithm=ALG, block_size=BS)
    assert local["checksum"] == value
    return value


def put(d: Daemon, ticket_id: str, offset: int, data: bytes) -> None:
    conn = d.local()
    try:
        r = request(conn, "PUT", f"/images/{ticket_id}", body=data,
                    headers={"Content-Range":
                             f"bytes {offset}-{offset + len(data) - 1}/*"})
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()


def zero(d: Daemon, ticket_id: str, offset: int, size: int) -> None:
    conn = d.local()
    try:
        r = request(conn, "PATCH", f"/images/{ticket_id}", body=json.dumps(
            {"op": "zero", "offset": offset, "size": size}))
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()


def upload(d: Daemon, ticket_id: str, data: bytes, step: int = BS) -> None:
    """Upload data in aligned requests of step bytes."""
    for offset in range(0, len(data), step):
        put(d, ticket_id, offset, data[offset:offset + step])


def hashed_ticket(d: Daemon, make_ticket: MakeTicket,
                  data: bytes | None = None) -> dict[str, Any]:
    # Random content in the file, so blocks nobody writes are data and
    # a checksum must read them.
    ticket = make_ticket(size=SIZE, data=data if data is not None
                         else os.urandom(SIZE), checksum=HASH)
    d.add_ticket(ticket)
    return ticket


def wait_active(d: Daemon, ticket_id: str, active: bool) -> None:
    """Wait until an operation runs on the ticket (or none does)."""
    deadline = time.monotonic() + 30
    while d.ticket(ticket_id)["active"] != active:
        assert time.monotonic() < deadline, "ticket never changed state"
        time.sleep(0.01)


def test_aligned_upload_checksum_reads_nothing(
        daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    assert daemon.ticket(tid)["checksum"] == HASH
    upload(daemon, tid, os.urandom(SIZE))
    value, read = checksum(daemon, tid)
    assert read == 0
    assert value == full_read(daemon, ticket)
    # Another algorithm or block size: a full read, the same as today.
    _, read = checksum(daemon, tid, f"?algorithm={ALG}"
                           f"&block_size={2 * BS}")
    assert read == SIZE
    _, read = checksum(daemon, tid, "")
    assert read == SIZE


def test_options_names_the_checksum(daemon: Daemon,
                                    make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    plain = make_ticket(size=SIZE)
    daemon.add_ticket(plain)
    conn = daemon.local()
    try:
        for t, expected in ((ticket, HASH), (plain, None)):
            r = request(conn, "OPTIONS", f"/images/{t['uuid']}")
            body = json.loads(r.read())
            assert r.status == 200
            assert body.get("checksum") == expected
    finally:
        conn.close()


@pytest.mark.parametrize("offset, length", [
    (BS // 2, 3 * BS),          # blocks 0 and 3 cut
    (1, SIZE - 1),              # block 0 cut
    (0, SIZE - 1),              # the short last block cut
    (3 * BS + 4096, 4096),      # inside one block
])
def test_partial_writes_read_the_rest(daemon: Daemon,
                                      make_ticket: MakeTicket,
                                      offset: int, length: int) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    put(daemon, tid, offset, os.urandom(length))
    value, read = checksum(daemon, tid)
    first = -(-offset // BS) * BS
    end = offset + length
    last = SIZE if end == SIZE else end // BS * BS
    hashed = max(0, last - first)
    assert read == SIZE - hashed
    assert value == full_read(daemon, ticket)


def test_rewrite_over_hashed_blocks(daemon: Daemon,
                                    make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    upload(daemon, tid, os.urandom(SIZE))
    # A partial write forgets the block it touches; a whole one rehashes.
    put(daemon, tid, 2 * BS + 100, b"x" * 100)
    put(daemon, tid, 5 * BS, os.urandom(BS))
    value, read = checksum(daemon, tid)
    assert read == BS
    assert value == full_read(daemon, ticket)


def test_overlapping_writes_from_two_connections(
        daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    upload(daemon, tid, os.urandom(SIZE))
    # The first PUT is running (its body half sent) while a second one
    # over the same two blocks starts and ends on another connection:
    # which reached storage last is unknown, so both blocks lose their
    # digests, whatever the order.
    first = os.urandom(2 * BS)
    conn = daemon.local()
    try:
        conn.putrequest("PUT", f"/images/{tid}")
        conn.putheader("Content-Length", str(len(first)))
        conn.putheader("Content-Range", f"bytes {BS}-{3 * BS - 1}/*")
        conn.endheaders()
        conn.send(first[:BS])
        wait_active(daemon, tid, True)
        put(daemon, tid, BS, os.urandom(2 * BS))
        conn.send(first[BS:])
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()
    value, read = checksum(daemon, tid)
    assert read == 2 * BS
    assert value == full_read(daemon, ticket)


def test_failed_write_leaves_blocks_unknown(
        daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    upload(daemon, tid, os.urandom(SIZE))
    # Half of a 2-block body, then the client goes away: neither block
    # keeps a digest, whatever part of the data reached storage.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(daemon.local_socket)
        sock.sendall(
            f"PUT /images/{tid} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {2 * BS}\r\n"
            f"Content-Range: bytes {4 * BS}-{6 * BS - 1}/*\r\n\r\n"
            .encode() + os.urandom(BS + 4096))
        wait_active(daemon, tid, True)
    finally:
        sock.close()
    wait_active(daemon, tid, False)
    value, read = checksum(daemon, tid)
    assert read == 2 * BS
    assert value == full_read(daemon, ticket)


def test_zero_requests(daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    upload(daemon, tid, os.urandom(SIZE))
    # Whole blocks zeroed keep the zero block digest, the short last
    # block included; a cut block is forgotten.
    zero(daemon, tid, BS, 2 * BS)
    zero(daemon, tid, 8 * BS, SIZE - 8 * BS)
    value, read = checksum(daemon, tid)
    assert read == 0
    assert value == full_read(daemon, ticket)
    zero(daemon, tid, 4 * BS + 1, BS)
    value, read = checksum(daemon, tid)
    assert read == 2 * BS
    assert value == full_read(daemon, ticket)


def test_chunked_upload(daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = hashed_ticket(daemon, make_ticket)
    tid = ticket["uuid"]
    data = os.urandom(SIZE)
    # Pieces that do not line up with blocks or buffers.
    pieces = [data[i:i + 999_999] for i in range(0, SIZE, 999_999)]
    conn = daemon.local()
    try:
        put_chunked(conn, f"/images/{tid}", pieces)
    finally:
        conn.close()
    value, read = checksum(daemon, tid)
    assert read == 0
    assert value == full_read(daemon, ticket)


def test_upload_with_verify(daemon: Daemon, make_ticket: MakeTicket,
                            tmp_path: Any,
                            caplog: pytest.LogCaptureFixture) -> None:
    # Data and holes on block boundaries: the client sends data in
    # aligned requests and zeroes the holes, so every block is hashed.
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(SIZE)
        for offset in (0, 3 * BS, 7 * BS):
            f.seek(offset)
            f.write(os.urandom(BS))
    ticket = hashed_ticket(daemon, make_ticket)
    url = (f"https://localhost:{daemon.port}/images/{ticket['uuid']}")
    before = checksum_counts(daemon)
    with caplog.at_level(logging.DEBUG, logger="client.checksum"):
        client.upload(str(src), url, CA, verify=True)
    # The client asked for the ticket's checksum, which read nothing.
    assert checksum_read(daemon, before) == 0
    # Nor did the client: it hashed every data block as it sent it.
    assert [r.getMessage() for r in caplog.records
            if r.name == "client.checksum"] == [
        f"Checksum read 0 of {-(-SIZE // BS)} blocks"]
    assert full_read(daemon, ticket) == client.checksum(
        str(src), algorithm=ALG, block_size=BS)["checksum"]


@pytest.mark.parametrize("value", [
    "sha256",
    {"algorithm": "no-such-hash"},
    {"algorithm": ALG, "block_size": 4096},
    {"algorithm": ALG, "block_size": BS + 1},
    {"algorithm": ALG, "block_size": "1048576"},
    {"algorithm": 5},
    None,
])
def test_invalid_checksum_field(daemon: Daemon, make_ticket: MakeTicket,
                                value: Any) -> None:
    ticket = make_ticket(checksum=value)
    ticket.pop("_path")
    status, body = daemon.control("PUT", f"/tickets/{ticket['uuid']}",
                                  ticket)
    assert status == 400, body
    assert "checksum" in str(body)
    status, _ = daemon.control("GET", f"/tickets/{ticket['uuid']}")
    assert status == 404


def test_metrics_count_full_checksum(daemon: Daemon,
                                     make_ticket: MakeTicket) -> None:
    # Without hash-on-write a checksum reads the data blocks only, not
    # the holes.
    ticket = make_ticket(size=SIZE)
    with open(ticket["_path"], "r+b") as f:
        f.write(os.urandom(BS))
    daemon.add_ticket(ticket)
    _, read = checksum(daemon, ticket["uuid"])
    assert read == BS

