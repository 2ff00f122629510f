# SPDX-License-Identifier: GPL-2.0-or-later
"""
Windowed extents (``?start=S&length=L``) on file, nbd and proxy tickets,
both contexts: a window is exactly the whole map cut to
``[S, min(S + L, size))``, and windows tiling the image give back the
whole map.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ovirt_imageio.tools import qemu_img, qemu_nbd

from support.daemon_util import PROXY_CONF, Daemon, request, running

KiB = 1024
MiB = 1024**2
CLUSTER = 64 * KiB
Serve = Callable[..., qemu_nbd.Server]


def get(d: Daemon, path: str) -> tuple[int, Any]:
    conn = d.remote()
    try:
        r = request(conn, "GET", path)
        body = r.read()
        if r.status == 200:
            return r.status, json.loads(body)
        return r.status, body.decode()
    finally:
        conn.close()


def cut(items: list[dict[str, Any]], start: int, end: int
        ) -> list[dict[str, Any]]:
    """The expected window, computed from the whole map."""
    out = []
    for e in items:
        lo, hi = max(e["start"], start), min(e["start"] + e["length"], end)
        if lo < hi:
            out.append(dict(e, start=lo, length=hi - lo))
    return out


def merged(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in items:
        flags = {k: v for k, v in e.items() if k not in ("start", "length")}
        if out:
            last = out[-1]
            last_flags = {k: v for k, v in last.items()
                          if k not in ("start", "length")}
            if last_flags == flags and \
                    last["start"] + last["length"] == e["start"]:
                last["length"] += e["length"]
                continue
        out.append(dict(e))
    return out


def check_windows(d: Daemon, ticket_id: str, size: int,
                  context: str = "zero") -> None:
    base = f"/images/{ticket_id}/extents?context={context}"
    status, whole = get(d, base)
    assert status == 200, whole
    assert len(whole) > 2, "the image should have several extents"
    windows = [(0, 1), (0, size), (1, size), (size - 1, 1), (5, 10),
               (MiB - 1, 2), (MiB, MiB), (3 * MiB + 7, 10 * MiB),
               (size, 0), (size, 5), (0, 0)]
    for start, length in windows:
        status, got = get(d, f"{base}&start={start}&length={length}")
        assert status == 200, got
        assert got == cut(whole, start, min(size, start + length)), \
            (start, length)
    # Without length: to the end.
    status, got = get(d, f"{base}&start={MiB + 3}")
    assert got == cut(whole, MiB + 3, size)
    # Windows of odd sizes tile the image.
    pieces: list[dict[str, Any]] = []
    step = 700 * KiB + 3
    for start in range(0, size, step):
        status, got = get(d, f"{base}&start={start}&length={step}")
        assert status == 200
        pieces.extend(got)
    assert merged(pieces) == whole


def test_file(daemon: Daemon, make_ticket: Callable[..., dict[str, Any]]
              ) -> None:
    size = 4 * MiB
    ticket = make_ticket(size=size)
    with open(ticket["_path"], "r+b") as f:
        f.seek(MiB)
        f.write(b"x" * MiB)
        f.seek(3 * MiB)
        f.write(b"y" * 4096)
    daemon.add_ticket(ticket)
    check_windows(daemon, ticket["uuid"], size)


def qemu_io(path: str, fmt: str, *commands: str) -> None:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd.extend(["-c", c])
    subprocess.run(cmd + [path], check=True, stdout=subprocess.DEVNULL)


def dirty_image(tmp_path: Any) -> str:
    image = str(tmp_path / "dirty.qcow2")
    qemu_img.create(image, "qcow2", size=4 * MiB)
    qemu_io(image, "qcow2", "write -P 0x11 0 1M", "write -z 1M 1M")
    qemu_img.bitmap_add(image, "b1", granularity=CLUSTER)
    qemu_io(image, "qcow2", "write -P 0x22 2M 64k", "write -z 3M 128k",
            "write -P 0x33 3200k 64k")
    return image


def nbd_ticket(d: Daemon, server: qemu_nbd.Server, size: int,
               **kw: Any) -> str:
    ticket = {"uuid": str(uuid.uuid4()), "size": size, "url": server.url,
              "timeout": 300, "ops": ["read"], **kw}
    d.add_ticket(ticket)
    return str(ticket["uuid"])


@pytest.mark.parametrize("context", ["zero", "dirty"])
def test_nbd(daemon: Daemon, tmp_path: Any, serve: Serve,
             context: str) -> None:
    server = serve(dirty_image(tmp_path), "qcow2", read_only=True,
                   bitmap="b1")
    ticket_id = nbd_ticket(daemon, server, 4 * MiB, dirty=True)
    check_windows(daemon, ticket_id, 4 * MiB, context)


@pytest.fixture(scope="module")
def host_and_proxy(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[Daemon, Daemon]]:
    with running(tmp_path_factory.mktemp("host"),
                 extra_conf="[local]\nenable = false\n") as host, \
            running(tmp_path_factory.mktemp("proxy"),
                    extra_conf=PROXY_CONF) as proxy:
        yield host, proxy


def test_proxy(host_and_proxy: tuple[Daemon, Daemon],
               make_ticket: Callable[..., dict[str, Any]]) -> None:
    host, proxy = host_and_proxy
    size = 4 * MiB
    ticket = make_ticket(size=size)
    with open(ticket["_path"], "r+b") as f:
        f.seek(2 * MiB)
        f.write(b"z" * MiB)
    ticket.pop("_path")
    host.add_ticket(ticket)
    proxy.add_ticket(dict(ticket, url=f"https://localhost:{host.port}"
                                      f"/images/{ticket['uuid']}"))
    check_windows(proxy, ticket["uuid"], size)


@pytest.mark.parametrize("query, message", [
    ("start=-1", "Invalid value for 'start'"),
    ("start=x", "Invalid value for 'start'"),
    ("start=%2B5", "Invalid value for 'start'"),
    ("length=-1", "Invalid value for 'length'"),
    ("length=1.5", "Invalid value for 'length'"),
    ("start=4194305", "Invalid value for 'start': 4194305 (past the end"),
])
def test_invalid(daemon: Daemon, make_ticket: Callable[..., dict[str, Any]],
                 query: str, message: str) -> None:
    ticket = make_ticket(size=4 * MiB)
    daemon.add_ticket(ticket)
    status, body = get(daemon, f"/images/{ticket['uuid']}/extents?{query}")
    assert status == 400
    assert message in body
