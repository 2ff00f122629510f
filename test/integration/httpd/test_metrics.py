# SPDX-License-Identifier: GPL-2.0-or-later
"""
Metrics: the registry and its text format (checked with the Prometheus
client's own parser), request classification, and ``GET /metrics`` of a
real daemon after a known set of requests.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio import __version__
from ovirt_imageio.httpd import metrics
from ovirt_imageio.httpd.metrics import (
    Counter,
    Gauge,
    Histogram,
    Metrics,
    Registry,
    RequestRecord,
    describe,
)
from ovirt_imageio.net.unixhttp import UnixHTTPConnection

from support.daemon_util import (
    Daemon,
    request,
    wait_for_close,
)

parser = pytest.importorskip(
    "prometheus_client.parser",
    reason="prometheus_client is needed to parse the metrics "
           "(pip install -r requirements-dev.txt)")

KiB = 1024
MiB = 1024**2

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Parse exposition text: ({family: type}, {(sample, labels): value})."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key
            samples[key] = s.value
    return types, samples


def select(samples: Samples, name: str, **match: str
           ) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one name whose labels include match."""
    return {labels: value for (n, labels), value in samples.items()
            if n == name and set(match.items()) <= set(labels)}


# The registry.


def test_counter_render_and_parse() -> None:
    r = Registry()
    c = r.add(Counter("demo_requests_total", "Requests.", ["method"]))
    c.inc(("GET",))
    c.inc(("GET",), 2)
    c.inc(("PUT",), 0.5)
    types, samples = parse(r.render())
    assert types == {"demo_requests": "counter"}
    assert samples == {
        ("demo_requests_total", (("method", "GET"),)): 3,
        ("demo_requests_total", (("method", "PUT"),)): 0.5,
    }


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    r = Registry()
    h = r.add(Histogram("demo_seconds", "Durations.", ["route"],
                        buckets=[0.1, 1.0]))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(value, ("/x",))
    types, samples = parse(r.render())
    assert types == {"demo_seconds": "histogram"}
    buckets = {dict(labels)["le"]: value for labels, value in
               select(samples, "demo_seconds_bucket").items()}
    # "le" means less than or equal: 0.1 and 1.0 fall in their buckets.
    assert buckets == {"0.1": 2, "1": 4, "+Inf": 5}
    assert select(samples, "demo_seconds_count") == {(("route", "/x"),): 5}
    assert select(samples, "demo_seconds_sum") == {
        (("route", "/x"),): pytest.approx(8.65)}


def test_gauge_calls_back() -> None:
    values: dict[tuple[str, ...], float] = {("a",): 1.0}
    r = Registry()
    r.add(Gauge("demo_things", "Things.", ["kind"], lambda: values))
    assert parse(r.render())[1] == {("demo_things", (("kind", "a"),)): 1}
    values = {("a",): 2.0, ("b",): 0.0}
    assert parse(r.render())[1] == {("demo_things", (("kind", "a"),)): 2,
                                    ("demo_things", (("kind", "b"),)): 0}


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_label_values_round_trip(value: str) -> None:
    r = Registry()
    r.add(Counter("demo_total", 'Help with \\ and\nnewline "quoted".',
                  ["v"])).inc((value,))
    _, samples = parse(r.render())
    assert samples == {("demo_total", (("v", value),)): 1}


@pytest.mark.parametrize("make", [
    lambda: Counter("bad name", "x"),
    lambda: Counter("1starts_with_digit", "x"),
    lambda: Histogram("h", "x", ["le"]),
    lambda: Histogram("h", "x", buckets=[1.0, 0.5]),
])
def test_invalid_families(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_misuse() -> None:
    r = Registry()
    c = r.add(Counter("demo_total", "x", ["a"]))
    with pytest.raises(ValueError):
        c.inc(("1", "2"))
    with pytest.raises(ValueError):
        c.inc(("1",), -1)
    with pytest.raises(ValueError):
        r.add(Counter("demo_total", "again"))


# What requests did.


@pytest.mark.parametrize("method,path,status,received,sent,body,expected", [
    ("GET", "/images/t", 200, 0, 100, None, ("read", 100)),
    ("GET", "/images/t", 206, 0, 10, None, ("read", 10)),
    ("PUT", "/images/t", 200, 4096, 0, None, ("write", 4096)),
    ("OPTIONS", "/images/t", 200, 0, 80, None, ("options", 0)),
    ("PATCH", "/images/t", 200, 30, 0, b'{"op": "zero", "size": 65536}',
     ("zero", 65536)),
    ("PATCH", "/images/t", 200, 14, 0, b'{"op": "flush"}', ("flush", 0)),
    ("PATCH", "/images/t", 200, 3, 0, b"[1]", (None, 0)),
    ("PATCH", "/images/t", 200, 3, 0, b"{", (None, 0)),
    ("GET", "/images/t/extents", 200, 0, 50, None, ("extents", 0)),
    ("GET", "/images/t/checksum", 200, 0, 50, None, ("checksum", 0)),
    ("GET", "/images/t", 403, 0, 50, None, (None, 0)),
    ("PUT", "/images/t", 416, 0, 50, None, (None, 0)),
    ("GET", "/tickets/t", 200, 0, 50, None, (None, 0)),
    ("GET", "/info/", 200, 0, 20, None, (None, 0)),
])
def test_describe(method: str, path: str, status: int, received: int,
                  sent: int, body: bytes | None,
                  expected: tuple[str | None, int]) -> None:
    assert describe(method, path, status, received, sent, body) == expected


@pytest.mark.parametrize("path,route", [
    ("/images/abc", "/images/{id}"),
    ("/images/abc/extents", "/images/{id}/extents"),
    ("/images/", "/images/{id}"),
    ("/other", "other"),
])
def test_route_label_hides_ticket_ids(path: str, route: str) -> None:
    m = Metrics()
    m.add_routes("s", [r"/images/(.*)/extents", r"/images/(.*)"])
    m.request_done(RequestRecord("s", "GET", path, 200, 0.1))
    _, samples = parse(m.render())
    assert select(samples, "ovirt_imageio_requests_total") == {
        (("method", "GET"), ("route", route), ("service", "s"),
         ("status", "200")): 1}


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
