# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon's log: one OPEN and one CLOSE line per connection, the CLOSE
line with per-phase statistics, and no ticket id (a secret) in full.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

from support.daemon_util import Daemon, request

KiB = 1024
MiB = 1024**2


def close_line(log: str, service: str, client: str) -> tuple[str, str]:
    """
    Return the OPEN line and the CLOSE statistics of the one connection
    of client to service (the thread name tells the service).
    """
    prefix = rf"\({re.escape(service)}/{re.escape(client)}\) \[server\] "
    closes = re.findall(
        rf"{prefix}CLOSE connection=(\d+) client={re.escape(client)} (.*)",
        log)
    assert len(closes) == 1, log
    conn_id, stats = closes[0]
    opens = re.findall(
        rf"{prefix}(OPEN connection={conn_id} client={re.escape(client)})$",
        log, re.M)
    assert len(opens) == 1, log
    return opens[0], stats


def test_connection_lines(tmp_path: Any, make_ticket: Any) -> None:
    ticket = make_ticket(size=MiB)
    tid = ticket["uuid"]
    unknown = str(uuid.uuid4())
    d = Daemon(tmp_path)
    d.start()
    try:
        d.add_ticket({k: v for k, v in ticket.items() if k != "_path"})
        conn = d.remote()
        try:
            steps: list[tuple[str, str, Any, int]] = [
                ("OPTIONS", f"/images/{tid}", None, 200),
                ("PUT", f"/images/{tid}", os.urandom(MiB), 200),
                ("GET", f"/images/{tid}", None, 200),
                ("PATCH", f"/images/{tid}",
                 json.dumps({"op": "zero", "offset": 0, "size": 64 * KiB}),
                 200),
                ("PATCH", f"/images/{tid}", json.dumps({"op": "flush"}), 200),
                ("GET", f"/images/{tid}/extents", None, 200),
                ("GET", f"/images/{tid}/checksum", None, 200),
                ("GET", f"/images/{tid}/checksum/algorithms", None, 200),
                # No phase: HEAD moves no image data.
                ("HEAD", f"/images/{tid}", None, 200),
            ]
            for method, path, body, status in steps:
                r = request(conn, method, path, body=body)
                r.read()
                assert r.status == status, (method, path)
        finally:
            conn.close()

        # A client error naming an unknown ticket in full.
        local = d.local()
        try:
            r = request(local, "GET", f"/images/{unknown}")
            r.read()
            assert r.status == 403
        finally:
            local.close()
    finally:
        # Stopping drains every connection, so all CLOSE lines are in.
        assert d.stop() == 0

    log = d.log()
    open_line, stats = close_line(log, "remote.service", "127.0.0.1")
    assert open_line.startswith("OPEN connection=")
    assert re.match(r"\[connection 1 ops, \d+\.\d{6} s\] "
                    r"\[dispatch 9 ops, \d+\.\d{6} s\] ", stats), stats
    rate = r"\d+\.\d\d [KMGT]iB/s|\d+ bytes/s"
    # The checksum's bytes are what it read from storage (the
    # algorithms request reads none).
    for phase, ops, size in [("read", 1, "1.00 MiB"),
                             ("write", 1, "1.00 MiB"),
                             ("zero", 1, "64.00 KiB"),
                             ("checksum", 2, "1.00 MiB")]:
        assert re.search(rf"\[{phase} {ops} ops, \d+\.\d{{6}} s, "
                         rf"{re.escape(size)}, ({rate})\]", stats), stats
    for phase, ops in (("options", 1), ("flush", 1), ("extents", 1)):
        assert re.search(rf"\[{phase} {ops} ops, \d+\.\d{{6}} s\]",
                         stats), stats

    # The local connection failed its request: no phase, one dispatch.
    _, local_stats = close_line(log, "local.service", "local")
    assert re.fullmatch(r"\[connection 1 ops, \d+\.\d{6} s\] "
                        r"\[dispatch 1 ops, \d+\.\d{6} s\]", local_stats)

    # Ticket ids are secrets: only short prefixes reach the log.
    assert tid not in log
    assert unknown not in log
    assert f"GET /images/{unknown[:8]}..." in log
