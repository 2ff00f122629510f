# SPDX-License-Identifier: GPL-2.0-or-later
"""httpd.message.Response sending a chunked body, on a mock stream."""

from __future__ import annotations

import pytest

from ovirt_imageio.httpd.message import Response
from ovirt_imageio.transfer.stream import MockStream


def test_chunked_response() -> None:
    stream = MockStream()
    resp = Response(stream, clock=lambda: 0.0)
    resp.headers["Content-Type"] = "application/json"
    resp.start_chunked(b"[1")
    resp.write_chunk(b", 2]")
    resp.end_chunked(b"\n")
    head, _, body = bytes(stream.sent).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert b"Content-Length" not in head
    assert body == b"2\r\n[1\r\n4\r\n, 2]\r\n1\r\n\n\r\n0\r\n\r\n"
    assert resp.started and resp.bytes_sent == 7
    with pytest.raises(RuntimeError):
        resp.start_chunked(b"x")


def test_chunked_end_without_data() -> None:
    stream = MockStream()
    resp = Response(stream, clock=lambda: 0.0)
    resp.start_chunked(b"[]")
    resp.end_chunked()
    assert bytes(stream.sent).endswith(b"\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
