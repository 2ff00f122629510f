# SPDX-License-Identifier: GPL-2.0-or-later
"""
Metrics without a daemon: what ``Metrics`` renders from the requests and
connections it observes (checked with the Prometheus client's own
parser), and the route labels. ``GET /metrics`` of a real daemon is
tested in test/integration/httpd/test_metrics.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.httpd import metrics
from ovirt_imageio.httpd.metrics import Metrics
from ovirt_imageio.httpd.stats import RequestRecord

from support.prometheus_text import parse, select

# The registry, through prometheus_client.


def record(seconds: float = 0.1, status: int = 200, path: str = "/x",
           phase: str | None = None, nbytes: int = 0,
           backend: str | None = None, service: str = "s"
           ) -> RequestRecord:
    return RequestRecord(service, "GET", path, status, seconds, phase,
                         nbytes, backend)


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    m = Metrics()
    for seconds in (0.0005, 0.001, 0.5, 1.0, 700.0):
        m.request_done(record(seconds))
    types, samples = parse(m.render())
    assert types["ovirt_imageio_request_duration_seconds"] == "histogram"
    buckets = {dict(labels)["le"]: value for labels, value in select(
        samples, "ovirt_imageio_request_duration_seconds_bucket").items()}
    # "le" means less than or equal: 0.001 and 1.0 fall in their buckets.
    assert buckets["0.001"] == 2
    assert buckets["0.5"] == 3
    assert buckets["1.0"] == 4
    assert buckets["300.0"] == 4
    assert buckets["+Inf"] == 5
    assert len(buckets) == len(metrics.DURATION_BUCKETS) + 1
    key = (("route", "other"), ("service", "s"))
    assert select(samples, "ovirt_imageio_request_duration_seconds_count"
                  ) == {key: 5}
    assert select(samples, "ovirt_imageio_request_duration_seconds_sum"
                  ) == {key: pytest.approx(701.5015)}


def test_bytes_by_backend_and_op() -> None:
    m = Metrics()
    m.request_done(record(phase="write", nbytes=4096, backend="nbd"))
    m.request_done(record(phase="write", nbytes=1024, backend="nbd"))
    m.request_done(record(phase="read", nbytes=10, backend="file"))
    m.request_done(record(phase="zero", nbytes=512))
    # Phases that move no payload, and failed requests, count nothing.
    m.request_done(record(phase="extents", backend="file"))
    m.request_done(record(status=500, backend="file"))
    _, samples = parse(m.render())
    assert select(samples, "ovirt_imageio_backend_bytes_total") == {
        (("backend", "nbd"), ("op", "write")): 5120,
        (("backend", "file"), ("op", "read")): 10,
        (("backend", "unknown"), ("op", "zero")): 512,
    }
    assert select(samples, "ovirt_imageio_errors_total") == {
        (("kind", "server"), ("service", "s")): 1}


def test_computed_gauges_follow_connections() -> None:
    m = Metrics()
    m.add_routes("a", [])
    _, samples = parse(m.render())
    assert select(samples, "ovirt_imageio_open_connections") == {
        (("service", "a"),): 0}
    m.connection_opened("a")
    m.connection_opened("b")
    _, samples = parse(m.render())
    assert select(samples, "ovirt_imageio_open_connections") == {
        (("service", "a"),): 1, (("service", "b"),): 1}
    m.connection_closed("b")
    _, samples = parse(m.render())
    assert select(samples, "ovirt_imageio_open_connections") == {
        (("service", "a"),): 1, (("service", "b"),): 0}
    assert select(samples, "ovirt_imageio_connections_total") == {
        (("service", "a"),): 1, (("service", "b"),): 1}


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.error("s", "tls")
    _, samples = parse(second.render())
    assert select(samples, "ovirt_imageio_errors_total") == {}
    _, samples = parse(first.render())
    assert select(samples, "ovirt_imageio_errors_total") == {
        (("kind", "tls"), ("service", "s")): 1}


def test_no_created_series() -> None:
    m = Metrics()
    m.request_done(record(phase="read", nbytes=1, backend="file"))
    m.connection_opened("s")
    _, samples = parse(m.render())
    assert samples
    assert not [name for name, _ in samples if name.endswith("_created")]


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_label_values_round_trip(value: str) -> None:
    m = Metrics()
    m.connection_opened(value)
    _, samples = parse(m.render())
    assert select(samples, "ovirt_imageio_connections_total") == {
        (("service", value),): 1}
    assert select(samples, "ovirt_imageio_open_connections") == {
        (("service", value),): 1}


# Route labels.


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


@given(st.lists(st.floats(min_value=0, max_value=1000), max_size=20))
def test_nbd_requests_done_counts_as_each_request(seconds: list[float]
                                                  ) -> None:
    # A run of the door's relay loop reports its reads at once; the
    # registry must show what one call per read shows.
    batch, single = Metrics(), Metrics()
    batch.nbd_requests_done("nbd", "READ", seconds)
    for s in seconds:
        single.nbd_request_done("nbd", "READ", "OK", s)
    assert parse(batch.render())[1] == parse(single.render())[1]
