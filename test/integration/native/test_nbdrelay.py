# SPDX-License-Identifier: GPL-2.0-or-later
"""
The relayed-read loop (ext/nbdrelay.c through native.nbdrelay) between a
client on a socket pair and real servers: qemu-nbd serving a file, and
nbdkit failing every read. The tests play the client with raw requests
and check every reply byte.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import socket
import struct
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.native import nbdrelay
from ovirt_imageio.nbd import wire
from ovirt_imageio.tools import qemu_nbd

from support import nbd_messages as m
from support.nbd_util import NBDKit

nbd = pytest.importorskip("nbd")

KiB = 1024
SIZE = 4 * 1024 * KiB
SLOT = 256 * KiB
HEADROOM = 4096

Serve = Callable[..., qemu_nbd.Server]


@pytest.fixture
def data() -> bytes:
    return random.Random(SIZE).randbytes(SIZE)


@pytest.fixture
def server(tmp_path: Any, serve: Serve, data: bytes) -> qemu_nbd.Server:
    image = tmp_path / "image.raw"
    image.write_bytes(data)
    return serve(image, "raw", read_only=True)


@pytest.fixture
def handle(server: qemu_nbd.Server) -> Iterator[Any]:
    h = nbd.NBD()
    h.connect_unix(server.sock_path)
    yield h
    if not h.aio_is_closed():
        h.shutdown()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, door = socket.socketpair()
    client.settimeout(10)
    yield client, door
    client.close()
    door.close()


def slots(n: int = 8) -> list[memoryview]:
    return [memoryview(bytearray(HEADROOM + SLOT)) for _ in range(n)]


def relay(door: socket.socket, structured: bool = True,
          **kw: Any) -> nbdrelay.Relay:
    return nbdrelay.Relay(door.fileno(), structured, SIZE, 512, SLOT,
                          headroom=HEADROOM, **kw)


def start(r: nbdrelay.Relay, *args: Any) -> concurrent.futures.Future[
        nbdrelay.Run]:
    """Run r in a thread: the run sends its replies before it returns,
    more than a socket pair holds, while the test reads them."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(r.run, *args)
    pool.shutdown(wait=False)
    return future


def read(offset: int, length: int, handle: int, flags: int = 0) -> bytes:
    return m.request(wire.CMD_READ, offset, length, handle=handle,
                     flags=flags)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def replies(sock: socket.socket, lengths: dict[int, int],
            structured: bool) -> dict[int, tuple[int | None, bytes]]:
    """{handle: (offset, data)} of one reply per handle in lengths; the
    offset is a structured reply's."""
    out: dict[int, tuple[int | None, bytes]] = {}
    for _ in lengths:
        if structured:
            magic, flags, type_, handle, length = struct.unpack(
                ">IHHQI", recv_exactly(sock, 20))
            assert (magic, flags, type_) == (
                wire.STRUCTURED_REPLY_MAGIC, wire.REPLY_FLAG_DONE,
                wire.REPLY_TYPE_OFFSET_DATA)
            assert length == 8 + lengths[handle]
            (offset,) = struct.unpack(">Q", recv_exactly(sock, 8))
            out[handle] = offset, recv_exactly(sock, lengths[handle])
        else:
            magic, error, handle = struct.unpack(
                ">IIQ", recv_exactly(sock, 16))
            assert (magic, error) == (wire.SIMPLE_REPLY_MAGIC, 0)
            out[handle] = None, recv_exactly(sock, lengths[handle])
    return out


@pytest.mark.parametrize("structured", [True, False])
def test_reads_answered_until_other_request(
        handle: Any, pair: tuple[socket.socket, socket.socket], data: bytes,
        structured: bool) -> None:
    client, door = pair
    rng = random.Random(1)
    reads = {}
    for i in range(40):
        length = rng.choice([512, 4 * KiB, 64 * KiB, SLOT])
        offset = rng.randrange(0, SIZE - length + 1, 512)
        reads[i] = (offset, length)
    flags = [0, wire.CMD_FLAG_FUA, wire.CMD_FLAG_DF]
    requests = b"".join(read(o, n, i, flags[i % 3])
                        for i, (o, n) in reads.items())
    flush = m.request(wire.CMD_FLUSH, handle=99)
    # Half now, the rest on the socket, then a request the loop leaves.
    pending = requests[:len(requests) // 2 + 5]
    client.sendall(requests[len(pending):] + flush)
    future = start(relay(door, structured), [handle], slots(), pending,
                   -1, 10_000, -1)
    got = replies(client, {i: n for i, (_, n) in reads.items()},
                  structured)
    run = future.result(10)
    assert run.reason == nbdrelay.OTHER
    assert (run.error, run.failed) == (0, b"")
    assert run.leftover == flush
    for i, (offset, length) in reads.items():
        assert got[i] == (offset if structured else None,
                          data[offset:offset + length])
    assert sorted(zip(run.offsets, run.lengths, strict=True)) == sorted(
        reads.values())
    assert all(s >= 0 for s in run.seconds)


def test_reads_over_several_handles(
        server: qemu_nbd.Server, handle: Any,
        pair: tuple[socket.socket, socket.socket], data: bytes) -> None:
    client, door = pair
    other = nbd.NBD()
    other.connect_unix(server.sock_path)
    try:
        reads = {i: (i * SLOT, SLOT) for i in range(SIZE // SLOT)}
        pending = b"".join(read(o, n, i) for i, (o, n) in reads.items())
        client.shutdown(socket.SHUT_WR)
        future = start(relay(door), [handle, other], slots(4), pending,
                       -1, 10_000, -1)
        got = replies(client, {i: n for i, (_, n) in reads.items()}, True)
        run = future.result(10)
    finally:
        other.shutdown()
    assert run.reason == nbdrelay.EOF
    assert b"".join(got[i][1] for i in sorted(reads)) == data


@pytest.mark.parametrize("request_, why", [
    (read(1, 512, 1), "unaligned offset"),
    (read(0, 100, 1), "unaligned length"),
    (read(SIZE - 512, 1024, 1), "past the end"),
    (read(SIZE, 512, 1), "at the end"),
    (read(0, 0, 1), "empty"),
    (read(0, SLOT + 512, 1), "larger than a slot"),
    (read(0, 512, 1, flags=wire.CMD_FLAG_REQ_ONE), "unknown flag"),
    (m.request(wire.CMD_WRITE, 0, 512, handle=1), "a write"),
    (m.request(wire.CMD_BLOCK_STATUS, 0, 512, handle=1), "block status"),
    (m.request(wire.CMD_DISC), "disconnect"),
    (b"\0" * 28, "bad magic"),
])
def test_other_requests_are_left(
        handle: Any, pair: tuple[socket.socket, socket.socket],
        request_: bytes, why: str) -> None:
    _, door = pair
    first = read(0, 4096, 7)
    run = relay(door).run([handle], slots(), first + request_ + first, -1,
                          10_000, -1)
    assert run.reason == nbdrelay.OTHER, why
    assert run.leftover == request_ + first
    assert run.offsets == [0]


def test_partial_header_waits_for_the_rest(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    request_ = read(4096, 4096, 3)
    client.sendall(request_[10:])
    client.shutdown(socket.SHUT_WR)
    run = relay(door).run([handle], slots(), request_[:10], -1, 10_000, -1)
    assert (run.reason, run.offsets, run.leftover) == (
        nbdrelay.EOF, [4096], b"")


def test_eof_in_a_header_leaves_its_bytes(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    client.shutdown(socket.SHUT_WR)
    run = relay(door).run([handle], slots(), b"\x25\x60", -1, 10_000, -1)
    assert (run.reason, run.offsets, run.leftover) == (
        nbdrelay.EOF, [], b"\x25\x60")


def test_deadline_with_nothing_to_do(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    _, door = pair
    run = relay(door).run([handle], slots(), b"", -1, 20, -1)
    assert (run.reason, run.offsets, run.leftover) == (
        nbdrelay.DEADLINE, [], b"")


def test_idle_once_all_is_answered(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    # Long before the deadline: the caller waits for the next request.
    run = relay(door).run([handle], slots(), read(0, 4096, 9), -1,
                          600_000, -1)
    assert (run.reason, run.offsets, run.leftover) == (
        nbdrelay.IDLE, [0], b"")
    assert replies(client, {9: 4096}, True)[9][0] == 0


def test_wake_ends_the_run_after_its_reads(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    wake = os.eventfd(1, os.EFD_NONBLOCK)
    try:
        run = relay(door).run([handle], slots(), read(0, 4096, 5), wake,
                              10_000, -1)
        # Left readable for its owner.
        assert os.eventfd_read(wake) == 1
    finally:
        os.close(wake)
    assert (run.reason, run.offsets) == (nbdrelay.WAKE, [0])
    assert replies(client, {5: 4096}, True)[5]


def test_full_after_max_done(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    _, door = pair
    reads = [read(i * 4096, 4096, i) for i in range(6)]
    run = relay(door, max_done=4).run([handle], slots(), b"".join(reads),
                                      -1, 10_000, -1)
    assert run.reason == nbdrelay.FULL
    assert sorted(run.offsets) == [0, 4096, 8192, 12288]
    assert run.leftover == reads[4] + reads[5]


def test_no_ready_handle(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    _, door = pair
    handle.shutdown()
    request_ = read(0, 4096, 1)
    run = relay(door).run([handle], slots(), request_, -1, 10_000, -1)
    assert (run.reason, run.offsets, run.leftover) == (
        nbdrelay.NO_HANDLE, [], request_)


def test_failed_reads_are_handed_back(
        sock_dir: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    kit = NBDKit(sock_dir, "--filter=error", "pattern", f"size={SIZE}",
                 "error-pread=EIO", "error-pread-rate=100%")
    try:
        h = nbd.NBD()
        h.connect_unix(kit.sock)
        reads = [read(i * 4096, 4096, i) for i in range(5)]
        run = relay(door).run([h], slots(), b"".join(reads), -1, 10_000,
                              -1)
        h.shutdown()
    finally:
        kit.stop()
    assert run.reason == nbdrelay.FAILED
    assert run.offsets == []
    failed = [run.failed[i:i + 28] for i in range(0, len(run.failed), 28)]
    assert sorted(failed) == sorted(reads)
    # Nothing was answered.
    client.settimeout(0)
    with pytest.raises(BlockingIOError):
        client.recv(1)


def test_client_gone(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    client.close()
    reads = b"".join(read(i * SLOT, SLOT, i) for i in range(8))
    run = relay(door).run([handle], slots(), reads, -1, 10_000, -1)
    assert run.reason == nbdrelay.ERROR
    assert run.error in (errno.EPIPE, errno.ECONNRESET)
    assert run.offsets == []


def test_client_that_takes_nothing_is_given_up(
        handle: Any, pair: tuple[socket.socket, socket.socket]) -> None:
    client, door = pair
    # More replies than the socket pair's buffers hold, never read.
    reads = b"".join(read((i % 16) * SLOT, SLOT, i) for i in range(32))
    run = relay(door).run([handle], slots(32), reads, -1, 50, 50)
    assert (run.reason, run.error) == (nbdrelay.ERROR, errno.ETIMEDOUT)
    assert len(run.offsets) < 32
