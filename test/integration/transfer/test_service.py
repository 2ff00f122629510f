# SPDX-License-Identifier: GPL-2.0-or-later
"""
transfer.service: how the accept loop prepares the sockets it hands to a
door, on real listening sockets in pytest's tmp_path and on loopback.
"""

from __future__ import annotations

import queue
import socket
from typing import Any, Iterator

import pytest

from ovirt_imageio.transfer import listen, service

from support import unix_send_buffer


class Recording(service.Service):
    """A door that reports each accepted socket's send buffer and
    closes it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("test.service", sock)
        self.seen: queue.Queue[tuple[int, int]] = queue.Queue()

    def _open(self, sock: socket.socket, client: str) -> None:
        self.seen.put((sock.family, sock.getsockopt(socket.SOL_SOCKET,
                                                    socket.SO_SNDBUF)))
        sock.close()
        return None


@pytest.fixture
def unix_service(tmp_path: Any) -> Iterator[Recording]:
    path = str(tmp_path / "sock")
    s = Recording(listen.unix_socket(path))
    s.start()
    yield s
    s.close()


def default_sndbuf(family: int) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def test_unix_connections_get_a_larger_send_buffer(
        unix_service: Recording) -> None:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(unix_service.address)
        family, sndbuf = unix_service.seen.get(timeout=10)
    assert family == socket.AF_UNIX
    assert sndbuf == unix_send_buffer()
    assert sndbuf > default_sndbuf(socket.AF_UNIX)
