# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hostile NBD clients: a handshake that never ends, more connections than
the limit, and a write too large to skip.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from typing import Any, Iterator

import pytest

from ovirt_imageio.nbd import wire

from support import nbd_messages as m
from support.daemon_util import Daemon

MiB = 1024**2


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nbd-hostile"), tls=False,
               extra_conf="""
                   [daemon]
                   header_timeout = 1
                   max_client_connections = 2

                   [nbd]
                   enable = true
                   port = -1
                   """)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def connect(d: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(d.config["nbd"]["socket"])
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_handshake_timeout(daemon: Daemon) -> None:
    sock = connect(daemon)
    try:
        start = time.monotonic()
        greeting = read_all(sock)
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    # The greeting, then nothing for header_timeout: closed.
    assert greeting[:8] == b"NBDMAGIC"
    assert 0.5 < elapsed < 5


def test_handshake_trickled(daemon: Daemon) -> None:
    # Options sent byte by byte cannot keep the handshake alive: the
    # timeout bounds the whole handshake, not each read.
    sock = connect(daemon)
    try:
        sock.recv(18)
        data = m.client_flags() + m.option(wire.OPT_LIST) * 100
        start = time.monotonic()
        # About 16 s at this pace; the server closes after 1 s, and a
        # send after that fails.
        with pytest.raises(OSError):
            for byte in data:
                sock.sendall(bytes([byte]))
                time.sleep(0.01)
        assert time.monotonic() - start < 5
    finally:
        sock.close()


def test_connection_limit(daemon: Daemon) -> None:
    held = [connect(daemon) for _ in range(2)]
    try:
        for s in held:
            assert s.recv(8) == b"NBDMAGIC"
        extra = connect(daemon)
        try:
            # Closed before the greeting.
            assert read_all(extra) == b""
        finally:
            extra.close()
    finally:
        for s in held:
            s.close()


def test_write_too_big_closes(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(bytes(64 * MiB))
    tid = str(uuid.uuid4())
    daemon.add_ticket({"uuid": tid, "size": 64 * MiB, "timeout": 300,
                       "url": f"file://{img}", "ops": ["write"]})
    sock = connect(daemon)
    try:
        sock.recv(18)
        sock.sendall(m.client_flags()
                     + m.option(wire.OPT_EXPORT_NAME, tid.encode()))
        size, _ = struct.unpack(">QH", sock.recv(10))
        assert size == 64 * MiB
        sock.sendall(m.request(wire.CMD_WRITE, 0, 33 * MiB))
        assert read_all(sock) == b""
    finally:
        sock.close()
    assert img.read_bytes() == bytes(64 * MiB)


def test_stop_ends_idle_connections(tmp_path: Any) -> None:
    d = Daemon(tmp_path / "d", tls=False, extra_conf="""
                   [nbd]
                   enable = true
                   port = -1
                   """)
    d.start()
    try:
        img = tmp_path / "img"
        img.write_bytes(bytes(MiB))
        tid = str(uuid.uuid4())
        d.add_ticket({"uuid": tid, "size": MiB, "timeout": 300,
                      "url": f"file://{img}", "ops": ["read"]})
        sock = connect(d)
        try:
            sock.recv(18)
            sock.sendall(m.client_flags()
                         + m.option(wire.OPT_EXPORT_NAME, tid.encode())
                         + m.request(wire.CMD_READ, 0, 4096, handle=9))
            data = b""
            while len(data) < 10 + 16 + 4096:
                data += sock.recv(65536)
            start = time.monotonic()
            # An idle connection does not hold up the stop (which waits
            # up to 30 s for busy ones).
            assert d.stop() == 0
            assert time.monotonic() - start < 10
            assert read_all(sock) == b""
        finally:
            sock.close()
    finally:
        d.stop()
