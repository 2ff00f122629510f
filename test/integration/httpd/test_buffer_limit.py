# SPDX-License-Identifier: GPL-2.0-or-later
"""
Many uploads at once through a real daemon whose buffer pool is smaller
than what they would use: requests wait for buffers, the pool never holds
more than ``[daemon] max_buffer_memory``, and every upload completes
intact. Seen through the pool's metrics.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from support.daemon_util import Daemon
from support.prometheus_text import parse, select

KiB = 1024
MiB = 1024**2
# The test configuration's buffer_size (test/conf/daemon.conf).
BUFFER = 128 * KiB
# Room for two requests' pairs.
LIMIT = 2 * 2 * BUFFER
UPLOADS = 8


def buffer_metrics(d: Daemon) -> dict[str, float]:
    status, text = d.control("GET", "/metrics")
    assert status == 200
    _, samples = parse(text)
    values = {dict(labels)["state"]: value for labels, value in
              select(samples, "ovirt_imageio_buffer_bytes").items()}
    values["waiting"] = select(samples, "ovirt_imageio_buffer_waiting")[()]
    values["waits"] = select(samples,
                             "ovirt_imageio_buffer_waits_total")[()]
    return values


def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_uploads_wait_for_buffers_within_the_limit(
        tmp_path: Any, make_ticket: Any) -> None:
    d = Daemon(tmp_path, tls=False, extra_conf=f"""
        [daemon]
        max_buffer_memory = {LIMIT}
        """)
    d.start()
    socks: list[socket.socket] = []
    try:
        tickets = [make_ticket(size=MiB) for _ in range(UPLOADS)]
        for t in tickets:
            d.add_ticket({k: v for k, v in t.items() if k != "_path"})
        data = [os.urandom(MiB) for _ in tickets]
        # Each request sends its head and its first chunk, then stops:
        # two hold the pool's pairs waiting for the rest of their body,
        # the others wait for a pair.
        for t, body in zip(tickets, data, strict=True):
            s = socket.create_connection(("localhost", d.port), timeout=60)
            socks.append(s)
            s.sendall(f"PUT /images/{t['uuid']} HTTP/1.1\r\n"
                      f"Host: localhost\r\nContent-Length: {MiB}\r\n\r\n"
                      .encode() + body[:BUFFER])
        until(lambda: buffer_metrics(d)["waiting"] == UPLOADS - 2)
        m = buffer_metrics(d)
        assert m["lent"] == LIMIT

        # The rest of every body, each from its own thread: a request
        # waiting for buffers reads nothing until it has them.
        def finish(s: socket.socket, body: bytes) -> None:
            s.sendall(body[BUFFER:])

        senders = [threading.Thread(target=finish, args=(s, body))
                   for s, body in zip(socks, data, strict=True)]
        for t in senders:
            t.start()
        for s in socks:
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200 "), reply
        for t in senders:
            t.join(60)

        for t, body in zip(tickets, data, strict=True):
            with open(t["_path"], "rb") as f:
                assert f.read() == body
        m = buffer_metrics(d)
        assert m["peak"] <= LIMIT
        assert (m["lent"], m["waiting"]) == (0, 0)
        assert m["waits"] >= UPLOADS - 2
        assert m["limit"] == LIMIT
    finally:
        for s in socks:
            s.close()
        assert d.stop() == 0
