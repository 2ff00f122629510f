# SPDX-License-Identifier: GPL-2.0-or-later
"""
Metrics: ``GET /metrics`` of a real daemon after a known set of
requests. What ``Metrics`` renders from what it observes is tested in
test/unit/httpd/test_metrics_registry.py.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

from ovirt_imageio import __version__
from ovirt_imageio.httpd import metrics
from ovirt_imageio.net.unixhttp import UnixHTTPConnection

from support.daemon_util import (
    Daemon,
    request,
    wait_for_close,
)
from support.prometheus_text import parse, select

KiB = 1024
MiB = 1024**2


# A real daemon.

def test_metrics_endpoint(tmp_path: Any, make_ticket: Any) -> None:
    ticket = make_ticket(size=MiB)
    tid = ticket["uuid"]
    d = Daemon(tmp_path, tls=False)
    d.start()  # GET /config/ on the control service.
    try:
        d.add_ticket({k: v for k, v in ticket.items() if k != "_path"})

        conn = d.remote()
        steps: list[tuple[str, str, Any, dict[str, str], int]] = [
            ("PUT", f"/images/{tid}", os.urandom(MiB), {}, 200),
            ("GET", f"/images/{tid}", None, {}, 200),
            ("GET", f"/images/{tid}", None, {"Range": "bytes=0-4095"}, 206),
            ("PATCH", f"/images/{tid}",
             json.dumps({"op": "zero", "size": 64 * KiB}), {}, 200),
            ("PATCH", f"/images/{tid}", json.dumps({"op": "flush"}), {},
             200),
            ("OPTIONS", f"/images/{tid}", None, {}, 200),
            ("GET", f"/images/{tid}/extents", None, {}, 200),
            ("GET", "/no/such/route", None, {}, 404),
        ]
        for method, path, body, headers, status in steps:
            r = request(conn, method, path, body=body, headers=headers)
            r.read()
            assert r.status == status, (method, path)
        wait_for_close(conn)
        conn.close()

        # 403 on the local service; the server closes the connection.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(d.local_socket)
            s.sendall(f"GET /images/{uuid.uuid4()} HTTP/1.1\r\n"
                      f"Host: localhost\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 403 ")

        assert d.control("GET", f"/tickets/{tid}")[0] == 200
        assert d.control("PATCH", f"/tickets/{tid}", {"timeout": 0})[0] \
            == 200

        status, text = d.control("GET", "/metrics")
        assert status == 200
    finally:
        assert d.stop() == 0

    types, samples = parse(text)
    assert types == {
        "ovirt_imageio_requests": "counter",
        "ovirt_imageio_request_duration_seconds": "histogram",
        "ovirt_imageio_backend_bytes": "counter",
        "ovirt_imageio_connections": "counter",
        "ovirt_imageio_errors": "counter",
        "ovirt_imageio_open_connections": "gauge",
        "ovirt_imageio_tickets": "gauge",
        "ovirt_imageio_build_info": "gauge",
        "ovirt_imageio_buffer_bytes": "gauge",
        "ovirt_imageio_buffer_waiting": "gauge",
        "ovirt_imageio_buffer_waits": "counter",
    }

    def requests(service: str, method: str, route: str, status: int
                 ) -> tuple[tuple[str, str], ...]:
        return (("method", method), ("route", route),
                ("service", f"{service}.service"), ("status", str(status)))

    assert select(samples, "ovirt_imageio_requests_total") == {
        requests("remote", "PUT", "/images/{id}", 200): 1,
        requests("remote", "GET", "/images/{id}", 200): 1,
        requests("remote", "GET", "/images/{id}", 206): 1,
        requests("remote", "PATCH", "/images/{id}", 200): 2,
        requests("remote", "OPTIONS", "/images/{id}", 200): 1,
        requests("remote", "GET", "/images/{id}/extents", 200): 1,
        requests("remote", "GET", "other", 404): 1,
        requests("local", "GET", "/images/{id}", 403): 1,
        requests("control", "GET", "/config/", 200): 1,
        requests("control", "PUT", "/tickets/{id}", 200): 1,
        requests("control", "GET", "/tickets/{id}", 200): 1,
        requests("control", "PATCH", "/tickets/{id}", 200): 1,
    }

    counts = {(dict(labels)["service"], dict(labels)["route"]): value
              for labels, value in select(
                  samples, "ovirt_imageio_request_duration_seconds_count"
              ).items()}
    assert counts == {
        ("remote.service", "/images/{id}"): 6,
        ("remote.service", "/images/{id}/extents"): 1,
        ("remote.service", "other"): 1,
        ("local.service", "/images/{id}"): 1,
        ("control.service", "/config/"): 1,
        ("control.service", "/tickets/{id}"): 3,
    }
    for (service, route), count in counts.items():
        inf = select(samples, "ovirt_imageio_request_duration_seconds_bucket",
                     service=service, route=route, le="+Inf")
        assert list(inf.values()) == [count]

    assert select(samples, "ovirt_imageio_backend_bytes_total") == {
        (("backend", "file"), ("op", "read")): MiB + 4096,
        (("backend", "file"), ("op", "write")): MiB,
        (("backend", "file"), ("op", "zero")): 64 * KiB,
    }
    assert select(samples, "ovirt_imageio_connections_total") == {
        (("service", "remote.service"),): 1,
        (("service", "local.service"),): 1,
        # /config/, add_ticket, GET, PATCH, and the scrape itself.
        (("service", "control.service"),): 5,
    }
    assert select(samples, "ovirt_imageio_open_connections") == {
        (("service", "remote.service"),): 0,
        (("service", "local.service"),): 0,
        (("service", "control.service"),): 1,
    }
    assert select(samples, "ovirt_imageio_errors_total") == {
        (("kind", "client"), ("service", "remote.service")): 1,
        (("kind", "client"), ("service", "local.service")): 1,
    }
    assert select(samples, "ovirt_imageio_tickets") == {
        (("state", "active"),): 0,
        (("state", "idle"),): 0,
        (("state", "expired"),): 1,
        (("state", "canceled"),): 0,
    }
    assert select(samples, "ovirt_imageio_build_info") == {
        (("version", __version__),): 1}
    # One request at a time: one pair of the test's 128 KiB buffers,
    # lent and kept for the next.
    assert select(samples, "ovirt_imageio_buffer_bytes") == {
        (("state", "lent"),): 0,
        (("state", "idle"),): 256 * KiB,
        (("state", "peak"),): 256 * KiB,
        (("state", "limit"),): 128 * MiB,
    }
    assert select(samples, "ovirt_imageio_buffer_waiting") == {(): 0}
    assert select(samples, "ovirt_imageio_buffer_waits_total") == {(): 0}


def test_metrics_content_type(tmp_path: Any) -> None:
    d = Daemon(tmp_path, tls=False)
    d.start()
    try:
        conn = d.local()
        # Only the control service serves metrics.
        r = request(conn, "GET", "/metrics")
        r.read()
        assert r.status == 404
        conn.close()

        control = UnixHTTPConnection(d.control_path)
        r = request(control, "GET", "/metrics")
        body = r.read()
        assert r.status == 200
        assert r.getheader("content-type") == metrics.CONTENT_TYPE
        assert body.endswith(b"\n")
        control.close()
    finally:
        d.stop()
