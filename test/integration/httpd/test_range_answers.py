# SPDX-License-Identifier: GPL-2.0-or-later
"""
Range answers as RFC 9110 states them, over TLS and the unix socket: the
complete length is the image's real size, a first byte past the end gets
416 with that size however large it is, a last byte past the end is
clamped.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable
from typing import Any

import pytest

from support.daemon_util import Daemon, request

MiB = 1024**2


@pytest.fixture(params=["remote", "local"])
def connect(request: pytest.FixtureRequest, daemon: Daemon
            ) -> Callable[[], http.client.HTTPConnection]:
    return getattr(daemon, request.param)  # type: ignore[no-any-return]


@pytest.fixture
def short_image(daemon: Daemon, make_ticket: Callable[..., dict[str, Any]]
                ) -> tuple[str, bytes]:
    """A ticket of 2 MiB over an image of 1 MiB."""
    data = os.urandom(MiB)
    ticket = make_ticket(size=2 * MiB, data=data, ops=("read",))
    ticket.pop("_path")
    daemon.add_ticket(ticket)
    return ticket["uuid"], data


@pytest.mark.parametrize("header, status, content_range, span", [
    ("bytes=0-99", 206, "bytes 0-99/1048576", (0, 100)),
    ("bytes=1048000-", 206, "bytes 1048000-1048575/1048576",
     (1048000, MiB)),
    # Past the end, however far: clamped to the image.
    ("bytes=0-2000000", 206, "bytes 0-1048575/1048576", (0, MiB)),
    (f"bytes=5-{2**70}", 206, "bytes 5-1048575/1048576", (5, MiB)),
    (f"bytes=5-{'9' * 3000}", 206, "bytes 5-1048575/1048576", (5, MiB)),
    # A first byte past the end: 416 with the real size.
    ("bytes=1048576-", 416, "bytes */1048576", None),
    (f"bytes={2**63}-", 416, "bytes */1048576", None),
    (f"bytes={2**70}-", 416, "bytes */1048576", None),
    (f"bytes={'9' * 3000}-", 416, "bytes */1048576", None),
])
def test_range(connect: Callable[[], http.client.HTTPConnection],
               short_image: tuple[str, bytes], header: str, status: int,
               content_range: str, span: tuple[int, int] | None) -> None:
    ticket_id, data = short_image
    conn = connect()
    try:
        resp = request(conn, "GET", f"/images/{ticket_id}",
                       headers={"Range": header})
        body = resp.read()
        assert resp.status == status
        assert resp.getheader("Content-Range") == content_range
        if span is not None:
            assert body == data[span[0]:span[1]]
    finally:
        conn.close()


def test_whole_image_is_real_size(
        connect: Callable[[], http.client.HTTPConnection],
        short_image: tuple[str, bytes]) -> None:
    ticket_id, data = short_image
    conn = connect()
    try:
        resp = request(conn, "GET", f"/images/{ticket_id}")
        assert resp.status == 200
        assert resp.read() == data
    finally:
        conn.close()
