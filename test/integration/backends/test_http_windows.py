# SPDX-License-Identifier: GPL-2.0-or-later
"""
The http backend and the client asking extents in windows: against our
daemon (the windows join into its whole map), against a server that
ignores the window parameters as upstream 2.5 does (its whole map is
used), and lazily: the first extents are there after one request.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any, Callable

import pytest

from ovirt_imageio.backends import http as http_backend
from ovirt_imageio.backends import http_extents
from ovirt_imageio.client import ImageioClient, download
from ovirt_imageio.util.extents import ZeroExtent, window

from support.daemon_util import PKI, Daemon, request
from support.old_server import LoopbackServer, QuietHandler

GiB = 1024**3
MiB = 1024**2
MakeTicket = Callable[..., dict[str, Any]]


def url(daemon: Daemon, ticket: dict[str, Any]) -> str:
    return f"https://localhost:{daemon.port}/images/{ticket['uuid']}"


def whole_map(daemon: Daemon, ticket: dict[str, Any]) -> list[ZeroExtent]:
    conn = daemon.remote()
    try:
        r = request(conn, "GET", f"/images/{ticket['uuid']}/extents")
        assert r.status == 200
        return [ZeroExtent(**e) for e in json.loads(r.read())]
    finally:
        conn.close()


@pytest.fixture
def sparse_ticket(daemon: Daemon, make_ticket: MakeTicket
                  ) -> dict[str, Any]:
    size = 10 * GiB
    t = make_ticket(size=size)
    with open(t["_path"], "r+b") as f:
        for offset in (0, GiB + GiB // 2, 5 * GiB, size - 4096):
            f.seek(offset)
            f.write(b"x" * 4096)
    daemon.add_ticket({k: v for k, v in t.items() if k != "_path"})
    return t


def test_windows_join_into_the_whole_map(daemon: Daemon,
                                         sparse_ticket: dict[str, Any]
                                         ) -> None:
    expected = whole_map(daemon, sparse_ticket)
    assert len(expected) > 4
    with http_backend.open(url(daemon, sparse_ticket), "r",
                           ca_file=f"{PKI}/ca.pem",
                           prefer_unix_socket=False) as b:
        # Larger than the first window: from a one byte GET.
        assert b.size() == 10 * GiB
        assert list(b.extents("zero", 3 * GiB, 6 * GiB)) == list(
            window(expected, 3 * GiB, 6 * GiB))
        assert list(b.extents()) == expected
        # Kept, like a map fetched whole.
        assert list(b.clone().extents()) == expected


def test_client_extents_in_windows(daemon: Daemon,
                                   sparse_ticket: dict[str, Any]) -> None:
    expected = whole_map(daemon, sparse_ticket)
    with ImageioClient(url(daemon, sparse_ticket),
                       cafile=f"{PKI}/ca.pem") as c:
        assert list(c.extents()) == expected


class ExtentsServer(LoopbackServer):
    """
    An imageio server for one in-memory image at /images/x, with
    extents: ``windows`` says whether it honours ``start`` and
    ``length`` (our daemon) or ignores them (upstream 2.5). Extents
    requests are recorded as their query dicts in ``asked``.
    """

    def __init__(self, image: bytes, extents: list[ZeroExtent],
                 windows: bool) -> None:
        self.image = image
        self.extents = extents
        self.windows = windows
        self.asked: list[dict[str, str]] = []
        server = self

        class Handler(QuietHandler):
            def do_OPTIONS(self) -> None:
                self._reply(200, json.dumps({
                    "features": ["extents", "zero", "flush"],
                    "max_readers": 2, "max_writers": 1}).encode())

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path.endswith("/extents"):
                    self._reply(200, server.answer(query))
                    return
                rng = self.headers["Range"]
                first, last = (int(n) for n in rng[6:].split("-"))
                last = min(last, len(server.image) - 1)
                self._reply(206, server.image[first:last + 1], {
                    "Content-Range":
                        f"bytes {first}-{last}/{len(server.image)}"})

        super().__init__(Handler, "extents-server")

    def answer(self, query: str) -> bytes:
        q = dict(urllib.parse.parse_qsl(query))
        self.asked.append(q)
        found = self.extents
        if self.windows and "start" in q:
            start = int(q["start"])
            end = min(len(self.image), start + int(q["length"]))
            found = list(window(self.extents, start, end))
        return json.dumps([e.to_dict() for e in found]).encode()


def image_and_map(size: int, data_at: list[int]
                  ) -> tuple[bytes, list[ZeroExtent]]:
    """An image with 4 KiB of data at each offset, zeros elsewhere."""
    image = bytearray(size)
    extents = []
    pos = 0
    for offset in data_at:
        image[offset:offset + 4096] = os.urandom(4096)
        if offset > pos:
            extents.append(ZeroExtent(pos, offset - pos, True, False))
        extents.append(ZeroExtent(offset, 4096, False, False))
        pos = offset + 4096
    if pos < size:
        extents.append(ZeroExtent(pos, size - pos, True, False))
    return bytes(image), extents


@pytest.mark.parametrize("windows", [True, False])
def test_first_extents_after_one_request(windows: bool) -> None:
    # The image is small; the windows are made small to match.
    size = 8 * MiB
    image, extents = image_and_map(size, [0, 3 * MiB, size - 4096])
    with ExtentsServer(image, extents, windows) as server:
        with http_backend.open(server.url, "r") as b, \
                pytest.MonkeyPatch.context() as mp:
            mp.setattr(http_extents, "FIRST_WINDOW", MiB)
            it = b.extents()
            assert next(it) == extents[0]
            assert len(server.asked) == 1
            assert server.asked[0] == {"context": "zero", "start": "0",
                                       "length": str(MiB)}
            assert [extents[0], *it] == extents
            if windows:
                # Doubling; the size is not known yet, so the last
                # window asks 8 MiB and gets the last 1 MiB.
                assert [q["length"] for q in server.asked] == [
                    str(n * MiB) for n in (1, 2, 4, 8)]
            else:
                # The whole map came with the first answer.
                assert len(server.asked) == 1
            # The whole map is kept: no more requests.
            assert b.size() == size
            assert list(b.extents()) == extents
            n = len(server.asked)
            assert list(b.extents("zero", MiB, 4 * MiB)) == list(
                window(extents, MiB, 4 * MiB))
            assert len(server.asked) == n


@pytest.mark.parametrize("windows", [True, False])
def test_download(tmp_path: Any, windows: bool) -> None:
    size = 8 * MiB
    image, extents = image_and_map(size, [0, 3 * MiB, size - 4096])
    target = str(tmp_path / "download.raw")
    with ExtentsServer(image, extents, windows) as server, \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(http_extents, "FIRST_WINDOW", MiB)
        download(server.url, target, None, fmt="raw")
        if windows:
            assert len(server.asked) > 1
            assert all("start" in q for q in server.asked)
        else:
            # Size and extents from the first answer.
            assert len(server.asked) == 1
    with open(target, "rb") as f:
        assert f.read() == image
