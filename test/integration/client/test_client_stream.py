# SPDX-License-Identifier: GPL-2.0-or-later
"""
Streaming one range through one request (client._stream) to and from a
real daemon, over TLS and over its local socket.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from ovirt_imageio.backends import base
from ovirt_imageio.client import _stream

from support.daemon_util import Daemon

MakeTicket = Callable[..., dict[str, Any]]


def test_read_from_and_write_to(daemon: Daemon, make_ticket: MakeTicket,
                                open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=300000)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    data = os.urandom(250000)
    buf = memoryview(bytearray(65536))
    _stream.read_from(b, io.BytesIO(data), 1000, len(data), buf)
    b.flush()
    with open(ticket["_path"], "rb") as f:
        assert f.read()[1000:251000] == data

    out = io.BytesIO()
    _stream.write_to(b, out, 1000, len(data), buf)
    assert out.getvalue() == data
    # The connection is reusable after both.
    assert b.size() == 300000


def test_read_from_short_reader(daemon: Daemon, make_ticket: MakeTicket,
                                open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    with pytest.raises(base.BackendError,
                       match="Reader ended after 100 of 200"):
        _stream.read_from(b, io.BytesIO(b"x" * 100), 0, 200,
                          memoryview(bytearray(4096)))
    # A new connection replaces the broken one.
    assert b.size() == 8192


def test_write_to_beyond_image(daemon: Daemon, make_ticket: MakeTicket,
                               open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192, data=b"x" * 4096)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    with pytest.raises(base.BackendError, match="4096 of the 8192"):
        _stream.write_to(b, io.BytesIO(), 0, 8192,
                         memoryview(bytearray(4096)))
    assert b.size() == 4096


@pytest.mark.parametrize("fail_at", [None, 0, 2])
def test_write_to_overlapped(daemon: Daemon, make_ticket: MakeTicket,
                             open_backend: Callable[..., Any],
                             fail_at: int | None) -> None:
    data = os.urandom(3 * 1024**2 + 7)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    got = bytearray()
    calls: list[str] = []

    class Out:
        def write(self, chunk: memoryview) -> None:
            calls.append(threading.current_thread().name)
            if fail_at is not None and len(calls) == fail_at + 1:
                raise OSError(errno.ENOSPC, "disk full")
            got.extend(chunk)

    buf, spare = bytearray(1024**2), bytearray(1024**2)
    with ThreadPoolExecutor(1, thread_name_prefix="helper") as ex:
        if fail_at is None:
            _stream.write_to(b, Out(), 0, len(data), memoryview(buf),
                             spare=memoryview(spare), executor=ex)
            assert got == data
        else:
            with pytest.raises(OSError, match="disk full"):
                _stream.write_to(b, Out(), 0, len(data),
                                 memoryview(buf), spare=memoryview(spare),
                                 executor=ex)
            assert got == data[:fail_at * 1024**2]
    assert calls and all(t.startswith("helper") for t in calls)
    # The connection was dropped or left clean: the backend still works.
    small = bytearray(100)
    assert b.readinto(5, memoryview(small)) == 100
    assert small == data[5:105]
