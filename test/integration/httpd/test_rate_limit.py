# SPDX-License-Identifier: GPL-2.0-or-later
"""Per-ticket rate limits through a real daemon."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from support.daemon_util import Daemon, request

MiB = 1024**2
MakeTicket = Callable[..., dict[str, Any]]


def upload(d: Daemon, ticket_id: str, data: bytes) -> float:
    conn = d.local()
    try:
        start = time.monotonic()
        r = request(conn, "PUT", f"/images/{ticket_id}", body=data)
        r.read()
        assert r.status == 200
        return time.monotonic() - start
    finally:
        conn.close()


def download(d: Daemon, ticket_id: str) -> tuple[float, bytes]:
    conn = d.local()
    try:
        start = time.monotonic()
        r = request(conn, "GET", f"/images/{ticket_id}")
        data = r.read()
        assert r.status == 200
        return time.monotonic() - start, data
    finally:
        conn.close()


def test_limit_holds_both_ways(daemon: Daemon,
                               make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=2 * MiB, rate_limit=4 * MiB)
    daemon.add_ticket(ticket)
    data = os.urandom(2 * MiB)
    # Never faster than the limit: 2 MiB at 4 MiB/s, less a burst of
    # 0.1 s, is at least 0.4 s.
    assert upload(daemon, ticket["uuid"], data) >= 0.4
    elapsed, got = download(daemon, ticket["uuid"])
    assert got == data
    assert elapsed >= 0.4


def test_patch_speeds_up_transfer_in_progress(
        daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=8 * MiB, rate_limit=MiB, ops=("write",))
    daemon.add_ticket(ticket)
    tid = ticket["uuid"]
    result: dict[str, float] = {}
    t = threading.Thread(
        target=lambda: result.update(
            elapsed=upload(daemon, tid, os.urandom(8 * MiB))))
    t.start()
    try:
        # Once data flows at 1 MiB/s (8 s in all), lift the limit.
        deadline = time.monotonic() + 30
        while not daemon.ticket(tid).get("transferred"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, _ = daemon.control("PATCH", f"/tickets/{tid}",
                                   {"rate_limit": 0})
        assert status == 200
    finally:
        t.join(60)
    # Far sooner than the 8 s the first limit would take.
    assert result["elapsed"] < 5


def test_zero_is_not_limited(daemon: Daemon,
                             make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=64 * MiB, rate_limit=1)
    daemon.add_ticket(ticket)
    conn = daemon.local()
    try:
        start = time.monotonic()
        r = request(conn, "PATCH", f"/images/{ticket['uuid']}",
                    body='{"op": "zero", "size": 67108864}')
        r.read()
        assert r.status == 200
        # At 1 byte per second moving 64 MiB would take years.
        assert time.monotonic() - start < 30
    finally:
        conn.close()
