# SPDX-License-Identifier: GPL-2.0-or-later
"""
Faults under a real daemon: clients vanishing mid-transfer (no leaked
threads, descriptors or buffers, measured in /proc/PID), storage full
(ENOSPC on a small tmpfs), I/O errors, read-only storage and a vanished
NBD server (nbdkit's error filter). How each error maps to a status
(``connection.map_error``) is tested in
test/unit/httpd/test_error_mapping.py.

Covered elsewhere: qemu-nbd killed mid-transfer (test_nbd_daemon.py),
the remote daemon killed under a proxy (test_proxy.py), SIGTERM during
a transfer (test_systemd.py), a ticket deleted during a stalled
transfer (test_tickets_api.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import uuid
from typing import Any, Iterator

import pytest

from support.daemon_util import Daemon, request, running
from support.nbd_util import NBDKit
from support.proc_util import (
    Resources,
    idle_pool_limit,
    resources,
    steady,
    wait_for,
)

KiB = 1024
MiB = 1024**2

# How long to wait for the daemon to clean up after a client vanished.
PATIENCE = 15

# The daemons here use [daemon] max_connections = 1, so the I/O pool has
# at most max(8, 4 * 1) threads; they stay once started.
POOL_THREADS = 8
# Buffers the daemon keeps for reuse (test/conf/daemon.conf sizes).
POOL_LIMIT = idle_pool_limit(128 * KiB)


# Clients vanishing mid-transfer.

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("faults"), extra_conf="""
        [daemon]
        max_connections = 1
        """) as d:
        yield d


def add_file_ticket(daemon: Daemon, path: str, size: int,
                    **kw: Any) -> str:
    ticket_id = str(uuid.uuid4())
    ticket = {"uuid": ticket_id, "size": size, "url": f"file://{path}",
              "timeout": 300, "ops": ["read", "write"]}
    ticket.update(kw)
    daemon.add_ticket(ticket)
    return ticket_id


def vanish_mid_put(daemon: Daemon, ticket_id: str, size: int,
                   reset: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.local_socket)
    sock.sendall(f"PUT /images/{ticket_id} HTTP/1.1\r\n"
                 f"Content-Length: {size}\r\n\r\n".encode())
    sock.sendall(os.urandom(MiB))
    if reset:
        # Close with a reset instead of an end of stream.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    sock.close()


def vanish_mid_get(daemon: Daemon, ticket_id: str, reset: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.local_socket)
    sock.sendall(f"GET /images/{ticket_id} HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(64 * KiB).startswith(b"HTTP/1.1 200 ")
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    sock.close()


def round_trip(daemon: Daemon, ticket_id: str, size: int) -> None:
    data = os.urandom(size)
    conn = daemon.local()
    try:
        r = request(conn, "PUT", f"/images/{ticket_id}", body=data)
        r.read()
        assert r.status == 200
        r = request(conn, "GET", f"/images/{ticket_id}")
        assert r.read() == data
    finally:
        conn.close()


def settled(daemon: Daemon, ticket_id: str, base: Resources) -> bool:
    now = resources(daemon.pid())
    return (daemon.ticket(ticket_id)["connections"] == 0
            and now.fds <= base.fds
            and now.buffers <= max(base.buffers, POOL_LIMIT)
            and now.threads <= base.threads + POOL_THREADS)


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
def test_client_vanishes_mid_transfer(daemon: Daemon, tmp_path: Any,
                                      reset: bool) -> None:
    size = 16 * MiB
    path = tmp_path / "image.raw"
    path.write_bytes(b"")
    os.truncate(path, size)
    ticket_id = add_file_ticket(daemon, str(path), size)
    # Warm up: the first transfers start the daemon's I/O pool threads.
    round_trip(daemon, ticket_id, size)
    assert wait_for(lambda: daemon.ticket(ticket_id)["connections"] == 0,
                    PATIENCE)
    base = steady(daemon.pid())

    for _ in range(6):
        vanish_mid_put(daemon, ticket_id, size, reset)
        vanish_mid_get(daemon, ticket_id, reset)

    # Twelve vanished clients leave nothing behind: each would hold a
    # thread, a socket, the image descriptor and two buffers.
    if not wait_for(lambda: settled(daemon, ticket_id, base), PATIENCE):
        now = resources(daemon.pid())
        pytest.fail(f"resources not released: before {base}, now {now}")

    # The ticket is still usable, and the daemon healthy.
    round_trip(daemon, ticket_id, size)
    info = daemon.ticket(ticket_id)
    assert not info["active"] and not info["canceled"]


# Storage full.

@pytest.fixture
def small_fs() -> Iterator[str]:
    """A 1 MiB tmpfs, mounted by the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tempfile.mkdtemp(prefix="imageio-enospc-")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755",
                        "imageio-test", mnt], capture_output=True, text=True)
    if p.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=True)
        os.rmdir(mnt)


def test_storage_full(daemon: Daemon, small_fs: str) -> None:
    path = os.path.join(small_fs, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    ticket_id = add_file_ticket(daemon, path, 8 * MiB)
    before = os.urandom(256 * KiB)
    conn = daemon.local()
    try:
        r = request(conn, "PUT", f"/images/{ticket_id}", body=before)
        r.read()
        assert r.status == 200

        # Far more than the file system holds.
        r = request(conn, "PUT", f"/images/{ticket_id}",
                    body=os.urandom(4 * MiB),
                    headers={"Content-Range": f"bytes {256 * KiB}-*/*"})
        body = r.read().decode()
        assert r.status == 507
        assert r.reason == "Insufficient Storage"
        assert "No space left on device" in body
        assert small_fs not in body
    finally:
        conn.close()

    # What was written before the failure is intact.
    conn = daemon.local()
    try:
        r = request(conn, "GET", f"/images/{ticket_id}",
                    headers={"Range": f"bytes=0-{256 * KiB - 1}"})
        assert r.read() == before
        assert r.status == 206
    finally:
        conn.close()
    daemon.control("DELETE", f"/tickets/{ticket_id}")


# Failing NBD storage, with nbdkit's error filter: errors are injected
# while a trigger file exists.

requires_nbdkit = pytest.mark.skipif(
    shutil.which("nbdkit") is None, reason="nbdkit is not installed")


@pytest.fixture
def failing_nbd(sock_dir: str) -> Iterator[tuple[NBDKit, str]]:
    trigger = os.path.join(sock_dir, "inject")

    def start(error: str) -> tuple[NBDKit, str]:
        server = NBDKit(sock_dir, "--filter=error", "memory", "4M",
                        f"error={error}", "error-rate=1",
                        f"error-file={trigger}")
        servers.append(server)
        return server, trigger

    servers: list[NBDKit] = []
    yield start  # type: ignore[misc]
    for s in servers:
        s.stop()


def add_nbd_ticket(daemon: Daemon, url: str, size: int) -> str:
    ticket_id = str(uuid.uuid4())
    daemon.add_ticket({"uuid": ticket_id, "size": size, "url": url,
                       "timeout": 300, "ops": ["read", "write"]})
    return ticket_id


def daemon_serves(daemon: Daemon) -> None:
    conn = daemon.local()
    try:
        r = request(conn, "OPTIONS", "/images/*")
        r.read()
        assert r.status == 200
    finally:
        conn.close()


@requires_nbdkit
@pytest.mark.parametrize("error,status,reason", [
    ("EIO", 500, "Input/output error"),
    ("ENOSPC", 507, "No space left on device"),
    ("EPERM", 403, "Operation not permitted"),
])
def test_nbd_errors(daemon: Daemon, failing_nbd: Any, error: str,
                    status: int, reason: str) -> None:
    server, trigger = failing_nbd(error)
    ticket_id = add_nbd_ticket(daemon, server.url, 4 * MiB)
    data = os.urandom(64 * KiB)
    conn = daemon.local()
    try:
        r = request(conn, "PUT", f"/images/{ticket_id}", body=data)
        r.read()
        assert r.status == 200

        with open(trigger, "w"):
            pass
        for method, body, headers in [
            ("GET", None, {"Range": "bytes=0-65535"}),
            ("PUT", data, {}),
            ("PATCH", json.dumps({"op": "zero", "size": 4096}), {}),
        ]:
            r = request(conn, method, f"/images/{ticket_id}", body=body,
                        headers=headers)
            text = r.read().decode()
            assert r.status == status, text
            assert reason in text
            assert server.sock not in text
            if r.getheader("connection") == "close":
                conn.close()

        # The storage recovers, and so does the transfer.
        os.unlink(trigger)
        r = request(conn, "GET", f"/images/{ticket_id}",
                    headers={"Range": "bytes=0-65535"})
        assert r.read() == data
    finally:
        conn.close()
    daemon_serves(daemon)


@requires_nbdkit
def test_nbd_server_gone_is_502(daemon: Daemon, failing_nbd: Any) -> None:
    server, _ = failing_nbd("EIO")
    ticket_id = add_nbd_ticket(daemon, server.url, 4 * MiB)
    server.stop()
    os.unlink(server.sock)
    conn = daemon.local()
    try:
        r = request(conn, "OPTIONS", f"/images/{ticket_id}")
        text = r.read().decode()
        assert r.status == 502
        assert r.reason == "Bad Gateway"
        assert "Cannot connect to NBD server" in text
        assert server.sock not in text
    finally:
        conn.close()
    daemon_serves(daemon)
