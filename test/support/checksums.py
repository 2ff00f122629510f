# SPDX-License-Identifier: GPL-2.0-or-later
"""
Checksums of a real daemon's tickets, and the bytes they read from
storage (``ovirt_imageio_backend_bytes_total{op="checksum"}``), for the
hash-on-write tests of both doors.
"""

from __future__ import annotations

import json
import time

from . import prometheus_text
from .daemon_util import Daemon, request


def checksum_counts(d: Daemon) -> tuple[int, int]:
    """Checksum requests answered 200, and the bytes they read."""
    status, text = d.control("GET", "/metrics")
    assert status == 200
    _, samples = prometheus_text.parse(text)
    requests = prometheus_text.select(
        samples, "ovirt_imageio_requests_total",
        route="/images/{id}/checksum", status="200")
    read = prometheus_text.select(
        samples, "ovirt_imageio_backend_bytes_total", op="checksum",
        backend="file")
    return int(sum(requests.values())), int(sum(read.values()))


def checksum_read(d: Daemon, before: tuple[int, int], requests: int = 1
                  ) -> int:
    """
    Bytes read by the next ``requests`` checksum requests since
    ``before``. A request is counted just after its answer is sent, so
    wait until the metrics have all of them.
    """
    deadline = time.monotonic() + 30
    while (now := checksum_counts(d))[0] < before[0] + requests:
        assert time.monotonic() < deadline, "checksum never counted"
        time.sleep(0.01)
    assert now[0] == before[0] + requests
    return now[1] - before[1]


def checksum(d: Daemon, ticket_id: str, query: str = ""
             ) -> tuple[str, int]:
    """The checksum of a ticket, and the bytes it read from storage."""
    before = checksum_counts(d)
    conn = d.local()
    try:
        r = request(conn, "GET", f"/images/{ticket_id}/checksum{query}")
        body = r.read()
        assert r.status == 200, body
    finally:
        conn.close()
    return json.loads(body)["checksum"], checksum_read(d, before)
