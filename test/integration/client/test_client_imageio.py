# SPDX-License-Identifier: GPL-2.0-or-later
"""ImageioClient against a real daemon."""

from __future__ import annotations

import errno
import io
import os
from typing import Any

import pytest

from ovirt_imageio.backends import base
from ovirt_imageio.client import ImageioClient, ImageioError
from ovirt_imageio.util.extents import ZeroExtent

from support.daemon_util import PKI, Daemon, free_port

CA = os.path.join(PKI, "ca.pem")
KiB = 1024
SIZE = 1024**2


def transfer_url(daemon: Daemon, ticket: dict[str, Any]) -> str:
    daemon.add_ticket({k: v for k, v in ticket.items()
                       if not k.startswith("_")})
    return f"https://localhost:{daemon.port}/images/{ticket['uuid']}"


def read_image(ticket: dict[str, Any]) -> bytes:
    with open(ticket["_path"], "rb") as f:
        return f.read()


def test_read_write_zero_flush(daemon: Daemon, make_ticket: Any) -> None:
    ticket = make_ticket(size=SIZE, data=b"a" * SIZE)
    with ImageioClient(transfer_url(daemon, ticket), cafile=CA) as c:
        assert c.size() == SIZE
        assert c.max_readers >= 1 and c.max_writers >= 1
        buf = bytearray(4 * KiB)
        assert c.read(8 * KiB, buf) == len(buf)
        assert buf == b"a" * len(buf)
        assert c.write(4 * KiB, b"b" * KiB) == KiB
        c.zero(64 * KiB, 128 * KiB)
        c.flush()
    data = read_image(ticket)
    assert data[4 * KiB:5 * KiB] == b"b" * KiB
    assert data[64 * KiB:192 * KiB] == bytes(128 * KiB)
    assert data[192 * KiB:] == b"a" * (SIZE - 192 * KiB)


def test_extents(daemon: Daemon, make_ticket: Any) -> None:
    ticket = make_ticket(size=SIZE)
    with open(ticket["_path"], "r+b") as f:
        f.write(b"x" * 4096)
    with ImageioClient(transfer_url(daemon, ticket), cafile=CA) as c:
        extents = list(c.extents())
    assert extents[0] == ZeroExtent(0, 4096, zero=False, hole=False)
    assert extents[-1].start + extents[-1].length == SIZE
    assert all(e.zero for e in extents[1:])


def test_read_from_and_write_to(daemon: Daemon, make_ticket: Any) -> None:
    ticket = make_ticket(size=SIZE)
    payload = os.urandom(300 * KiB)
    with ImageioClient(transfer_url(daemon, ticket), cafile=CA,
                       buffer_size=64 * KiB) as c:
        c.read_from(io.BytesIO(payload), 100 * KiB, len(payload))
        c.flush()
        out = io.BytesIO()
        c.write_to(out, 100 * KiB, len(payload))
    assert out.getvalue() == payload
    assert read_image(ticket)[100 * KiB:400 * KiB] == payload


@pytest.mark.parametrize("call", [
    lambda c: c.read(SIZE - 10, bytearray(11)),
    lambda c: c.write(SIZE, b"x"),
    lambda c: c.zero(SIZE - 1, 2),
    lambda c: c.read(-1, bytearray(1)),
])
def test_beyond_size(daemon: Daemon, make_ticket: Any, call: Any) -> None:
    ticket = make_ticket(size=SIZE)
    with ImageioClient(transfer_url(daemon, ticket), cafile=CA) as c:
        with pytest.raises(ValueError):
            call(c)


def test_closed(daemon: Daemon, make_ticket: Any) -> None:
    c = ImageioClient(transfer_url(daemon, make_ticket()), cafile=CA)
    c.close()
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.size()


def test_proxy_url(daemon: Daemon, make_ticket: Any) -> None:
    ticket = make_ticket(size=SIZE)
    url = transfer_url(daemon, ticket)
    dead = f"https://localhost:{free_port()}/images/{ticket['uuid']}"
    with ImageioClient(dead, cafile=CA, proxy_url=url) as c:
        assert c.size() == SIZE


def test_unknown_ticket(daemon: Daemon) -> None:
    url = f"https://localhost:{daemon.port}/images/no-such-ticket"
    with pytest.raises(base.RemoteError) as e:
        ImageioClient(url, cafile=CA)
    assert e.value.status == 403


def test_read_only_ticket(daemon: Daemon, make_ticket: Any) -> None:
    ticket = make_ticket(size=SIZE, ops=("read",))
    with ImageioClient(transfer_url(daemon, ticket), cafile=CA) as c:
        c.read(0, bytearray(KiB))
        with pytest.raises(base.RemoteError) as e:
            c.write(0, b"x" * KiB)
        assert e.value.status == 403


def test_errors_share_one_root(daemon: Daemon, make_ticket: Any) -> None:
    # The server refusing, and the system failing under the client.
    url = f"https://localhost:{daemon.port}/images/no-such-ticket"
    with pytest.raises(ImageioError):
        ImageioClient(url, cafile=CA)

    class BrokenReader:
        def readinto(self, buf: memoryview) -> int:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp")

    with ImageioClient(transfer_url(daemon, make_ticket()), cafile=CA) as c:
        with pytest.raises(ImageioError) as e:
            c.read_from(BrokenReader(), 0, KiB)
    # As before, it is the system's error too.
    assert isinstance(e.value, IsADirectoryError)
    assert e.value.filename == "/tmp"


def test_unreachable_is_rooted() -> None:
    url = f"https://localhost:{free_port()}/images/x"
    with pytest.raises(ImageioError) as e:
        ImageioClient(url, cafile=CA)
    assert isinstance(e.value, OSError)
