# SPDX-License-Identifier: GPL-2.0-or-later
"""
The ledger through a real daemon: ``context=written`` extents after
uploads and zeros, read-only tickets, windows, and the ledger surviving a
daemon killed and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from support import prometheus_text
from support.daemon_util import Daemon, request

MiB = 1024**2
MakeTicket = Callable[..., dict[str, Any]]


def written(d: Daemon, ticket_id: str, query: str = "") -> Any:
    conn = d.local()
    try:
        r = request(conn, "GET",
                    f"/images/{ticket_id}/extents?context=written{query}")
        body = r.read()
        assert r.status == 200, body
        return [(e["start"], e["length"], e["written"])
                for e in json.loads(body)]
    finally:
        conn.close()


def put(d: Daemon, ticket_id: str, offset: int, data: bytes,
        flush: bool = True) -> None:
    conn = d.local()
    try:
        r = request(conn, "PUT",
                    f"/images/{ticket_id}?flush={'y' if flush else 'n'}",
                    body=data, headers={
                        "Content-Range":
                        f"bytes {offset}-{offset + len(data) - 1}/*"})
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()


def patch(d: Daemon, ticket_id: str, msg: dict[str, Any]) -> None:
    conn = d.local()
    try:
        r = request(conn, "PATCH", f"/images/{ticket_id}",
                    body=json.dumps(msg))
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()


def test_written_after_puts_and_zero(daemon: Daemon,
                                     make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=4 * MiB)
    daemon.add_ticket(ticket)
    tid = ticket["uuid"]
    assert written(daemon, tid) == [(0, 4 * MiB, False)]
    put(daemon, tid, 0, b"a" * MiB)
    put(daemon, tid, 2 * MiB, b"b" * 4096, flush=False)
    patch(daemon, tid, {"op": "zero", "offset": 3 * MiB, "size": MiB})
    assert written(daemon, tid) == [
        (0, MiB, True), (MiB, MiB, False), (2 * MiB, 4096, True),
        (2 * MiB + 4096, MiB - 4096, False), (3 * MiB, MiB, True)]
    # Windows as for the other contexts.
    assert written(daemon, tid, f"&start={MiB - 10}&length=20") == [
        (MiB - 10, 10, True), (MiB, 10, False)]


def test_written_on_read_only_ticket(daemon: Daemon,
                                     make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=MiB, ops=("read",))
    daemon.add_ticket(ticket)
    assert written(daemon, ticket["uuid"]) == [(0, MiB, False)]


def test_failed_put_is_not_written(daemon: Daemon,
                                   make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=MiB)
    daemon.add_ticket(ticket)
    conn = daemon.local()
    try:
        # Past the end: refused before anything is written.
        r = request(conn, "PUT", f"/images/{ticket['uuid']}",
                    body=b"x" * 10, headers={
                        "Content-Range": f"bytes {MiB - 5}-{MiB + 4}/*"})
        r.read()
        assert r.status == 416
    finally:
        conn.close()
    assert written(daemon, ticket["uuid"]) == [(0, MiB, False)]


def ledger_files(d: Daemon) -> list[str]:
    return sorted(n for n in os.listdir(d.run_dir)
                  if n.startswith("ledger-"))


def test_ledger_survives_daemon_kill(tmp_path: Any,
                                     make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=4 * MiB)
    d = Daemon(tmp_path / "daemon", tls=False)
    d.start()
    try:
        d.add_ticket(ticket)
        tid = ticket["uuid"]
        put(d, tid, 0, b"a" * MiB)                    # flushed: durable
        put(d, tid, 2 * MiB, b"b" * MiB, flush=False)  # not durable
        names = ledger_files(d)
        assert len(names) == 1
        # Named so that the run directory does not reveal the id.
        assert tid not in names[0] and tid[:8] not in names[0]
        mode = os.stat(os.path.join(d.run_dir, names[0])).st_mode
        assert stat.S_IMODE(mode) == 0o600
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        d.stop()
    d.start()
    try:
        d.add_ticket(ticket)
        assert written(d, tid) == [(0, MiB, True), (MiB, 3 * MiB, False)]
        # Another image under the same id starts empty.
        other = make_ticket(size=4 * MiB, uuid=tid)
        d.add_ticket(other)
        assert written(d, tid) == [(0, 4 * MiB, False)]
        # Deleting the ticket deletes its ledger.
        d.add_ticket(ticket)
        put(d, tid, 0, b"c" * 10)
        assert ledger_files(d)
        status, _ = d.control("DELETE", f"/tickets/{tid}")
        assert status == 204
        assert ledger_files(d) == []
    finally:
        assert d.stop() == 0


def test_damaged_ledger_ignored(tmp_path: Any,
                                make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=MiB)
    d = Daemon(tmp_path / "daemon", tls=False)
    d.start()
    try:
        d.add_ticket(ticket)
        put(d, ticket["uuid"], 0, b"a" * 4096)
    finally:
        assert d.stop() == 0
    (name,) = ledger_files(d)
    with open(os.path.join(d.run_dir, name), "r+b") as f:
        f.seek(30)
        f.write(b"#")
    d.start()
    try:
        d.add_ticket(ticket)
        assert written(d, ticket["uuid"]) == [(0, MiB, False)]
        assert "Ignoring damaged ledger" in d.log()
    finally:
        assert d.stop() == 0


def cut_put(d: Daemon, ticket_id: str, head: list[str], body: bytes) -> None:
    """
    Send a PUT's head and part of its body, end our side, and wait until
    the daemon closed the connection: by then the cut request's
    bookkeeping is done (see wait_for_close).
    """
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.settimeout(60)
        sock.connect(d.local_socket)
        lines = [f"PUT /images/{ticket_id}?flush=n HTTP/1.1",
                 "Host: localhost", *head, "", ""]
        sock.sendall("\r\n".join(lines).encode() + body)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    finally:
        sock.close()


def bytes_written(d: Daemon) -> int:
    """The daemon's count of bytes written to file backends."""
    status, text = d.control("GET", "/metrics")
    assert status == 200
    _, samples = prometheus_text.parse(text)
    found = prometheus_text.select(
        samples, "ovirt_imageio_backend_bytes_total", op="write",
        backend="file")
    return int(sum(found.values()))


# Whole 4096-byte blocks past 10 MiB, plus a partial block: the written
# prefix ends at the same place for 512 and 4096-byte storage blocks.
CUT = 10 * MiB + 8192 + 100
CUT_PREFIX = 10 * MiB + 8192


def test_cut_put_records_written_prefix(daemon: Daemon,
                                        make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=32 * MiB)
    daemon.add_ticket(ticket)
    tid = ticket["uuid"]
    data = os.urandom(CUT)
    before = bytes_written(daemon)
    # Longer than the daemon's buffers: whole buffers, then the received
    # part of the one the cut left partly filled.
    cut_put(daemon, tid, [f"Content-Range: bytes {MiB}-{MiB + 20 * MiB - 1}/*",
                          f"Content-Length: {20 * MiB}"], data)
    assert written(daemon, tid) == [
        (0, MiB, False), (MiB, CUT_PREFIX, True),
        (MiB + CUT_PREFIX, 32 * MiB - MiB - CUT_PREFIX, False)]
    # What reached storage is in the metrics too, though the PUT failed.
    assert bytes_written(daemon) - before == CUT_PREFIX
    with open(ticket["_path"], "rb") as f:
        f.seek(MiB)
        assert f.read(CUT_PREFIX) == data[:CUT_PREFIX]


def test_cut_chunked_put_records_written_prefix(
        daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=32 * MiB)
    daemon.add_ticket(ticket)
    tid = ticket["uuid"]
    data = os.urandom(CUT)
    framed = b"".join(
        b"%x\r\n" % len(piece) + piece + b"\r\n"
        for piece in (data[i:i + MiB] for i in range(0, 10 * MiB, MiB)))
    # The last chunk announced whole, cut in its middle.
    framed += b"%x\r\n" % MiB + data[10 * MiB:]
    before = bytes_written(daemon)
    cut_put(daemon, tid, [f"Content-Range: bytes {MiB}-*/*",
                          "Transfer-Encoding: chunked"], framed)
    extents = written(daemon, tid)
    # A chunked body writes every byte that arrived.
    assert extents == [(0, MiB, False), (MiB, CUT, True),
                       (MiB + CUT, 32 * MiB - MiB - CUT, False)]
    assert bytes_written(daemon) - before == CUT
    with open(ticket["_path"], "rb") as f:
        f.seek(MiB)
        assert f.read(CUT) == data
