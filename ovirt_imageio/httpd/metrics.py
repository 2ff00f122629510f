# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon-wide metrics served on ``GET /metrics`` of the control
service, kept with ``prometheus_client``.

Theory of operation
-------------------
Connections report to an observer: a connection opened or closed, an
error, a finished request (a ``stats.RequestRecord``, with the phase,
bytes and backend its handler recorded). :class:`Metrics` is that
observer. It keeps counters and a histogram of ``prometheus_client`` in a
registry of its own (several daemons may run in one process, as in the
tests), updated by connection threads under the library's per-value
locks. Values whose truth lives elsewhere (tickets by state, open
connections) are computed when scraped, by a collector, instead of being
kept in sync.

Bytes are counted once a request succeeds, as its handler recorded them:
a download counts the body bytes sent, an upload the body bytes received,
a zero request the ``size`` of its JSON message. A request that fails
counts no bytes, even if it moved some before failing.

The metric names are documented in ``docs/metrics.md``; changing one
breaks dashboards, so treat them as API.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .. import __version__
from .stats import BYTE_PHASES, RequestRecord

if TYPE_CHECKING:
    from ..transfer.buffers import BufferPool
    from ..transfer.store import TicketStore

# The text format served on /metrics: the Prometheus text format 0.0.4
# that prometheus_client.generate_latest writes (docs/metrics.md).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# prometheus_client adds a "<name>_created" series (a timestamp) to every
# counter and histogram unless told not to. They are not part of our
# documented metrics, and a daemon restart is visible from the counters
# going back to 0. The switch is the library's global one; the daemon is
# the only user of prometheus_client in its process.
# (The function is not annotated in prometheus_client 0.26.)
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# A labelled metric, and its child for one set of label values.
_Labelled = TypeVar("_Labelled", prometheus_client.Counter,
                    prometheus_client.Histogram)

# Request durations range from sub-millisecond ticket polls to minutes
# long multi-gigabyte transfers (one request may carry a whole image).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
                    30.0, 60.0, 300.0)

# The route label of NBD requests: every request is on the connection's
# export (a ticket id, which never appears in metrics).
NBD_ROUTE = "{export}"

# Ticket states reported by ovirt_imageio_tickets, always all of them so
# a state with no ticket shows 0 instead of vanishing.
TICKET_STATES = ("active", "idle", "expired", "canceled")


class Metrics:
    """
    The daemon's metrics, and the connection observer that feeds them.

    Example::

        m = Metrics()
        m.add_routes("remote.service", [r"/images/(.*)"])
        m.watch_tickets(store)
        text = m.render()
    """

    def __init__(self) -> None:
        r = self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "ovirt_imageio_requests_total",
            "HTTP and NBD requests served, by service, method, route and "
            "status.",
            ("service", "method", "route", "status"), registry=r)
        self.duration = prometheus_client.Histogram(
            "ovirt_imageio_request_duration_seconds",
            "Time from a request head to the end of its response.",
            ("service", "route"), buckets=DURATION_BUCKETS, registry=r)
        self.bytes = prometheus_client.Counter(
            "ovirt_imageio_backend_bytes_total",
            "Bytes read, written or zeroed by successful requests, by "
            "backend.", ("backend", "op"), registry=r)
        self.accepted = prometheus_client.Counter(
            "ovirt_imageio_connections_total",
            "Connections accepted, by service.", ("service",), registry=r)
        self.errors = prometheus_client.Counter(
            "ovirt_imageio_errors_total",
            "Errors by service and kind: client (4xx), server (5xx), "
            "connection (I/O error ending a connection), tls (failed "
            "handshake), rejected (over the connection limit).",
            ("service", "kind"), registry=r)
        r.register(_Computed(self))
        # Children by label values, looked up without the library's
        # labels() (which checks and converts its arguments under a lock)
        # for every request: it tripled the cost of request_done. A race
        # may call labels() twice for one key; it returns the same child.
        self._children: dict[tuple[object, ...], object] = {}
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._routes: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        self._tickets: TicketStore | None = None
        self._buffers: BufferPool | None = None

    # Wiring.

    def add_routes(self, service: str, patterns: Iterable[str]) -> None:
        """
        Use a service's route patterns (as given to its Router) as the
        ``route`` label: ``/images/(.*)`` becomes ``/images/{id}``.
        Keeping the label to known routes bounds the number of series,
        and keeps ticket ids (secrets) out of the metrics.
        """
        routes = []
        for pattern in patterns:
            label = re.sub(r"\([^)]*\)", "{id}", pattern)
            routes.append((re.compile(pattern + "$"), label))
        with self._lock:
            self._routes[service] = routes

    def watch_tickets(self, tickets: TicketStore) -> None:
        self._tickets = tickets

    def watch_buffers(self, pool: BufferPool) -> None:
        self._buffers = pool

    # Observer interface, called by connections.

    def connection_opened(self, service: str) -> None:
        self.accepted.labels(service).inc()
        with self._lock:
            self._open[service] = self._open.get(service, 0) + 1

    def connection_closed(self, service: str) -> None:
        with self._lock:
            self._open[service] = self._open.get(service, 0) - 1

    def error(self, service: str, kind: str) -> None:
        self._child(self.errors, service, kind).inc()

    def bytes_moved(self, backend: str, op: str, nbytes: int) -> None:
        """Image bytes a door moved outside HTTP requests (NBD)."""
        self._child(self.bytes, backend, op).inc(nbytes)

    def request_done(self, record: RequestRecord) -> None:
        route = self._route(record.service, record.path)
        self._count_request(record.service, record.method, route,
                            record.status, record.seconds)
        if record.status >= 500:
            self.error(record.service, "server")
        elif record.status >= 400:
            self.error(record.service, "client")
        if record.phase in BYTE_PHASES and record.nbytes:
            self._child(self.bytes, record.backend or "unknown",
                        record.phase).inc(record.nbytes)

    def nbd_request_done(self, service: str, command: str, status: str,
                         seconds: float) -> None:
        """
        An NBD request answered, counted with the HTTP requests: its
        command as the method, ``{export}`` as the route, its NBD error
        name (``OK`` for success) as the status.
        """
        self._count_request(service, command, NBD_ROUTE, status, seconds)

    def nbd_requests_done(self, service: str, command: str,
                          seconds: Sequence[float]) -> None:
        """
        NBD requests answered OK, taking ``seconds[i]`` each: as many
        ``nbd_request_done`` calls, for a run of the door's relay loop.
        """
        if not seconds:
            return
        self._child(self.requests, service, command, NBD_ROUTE,
                    "OK").inc(len(seconds))
        observe = self._child(self.duration, service, NBD_ROUTE).observe
        for s in seconds:
            observe(s)

    def _count_request(self, service: str, method: str, route: str,
                       status: object, seconds: float) -> None:
        self._child(self.requests, service, method, route, status).inc()
        self._child(self.duration, service, route).observe(seconds)

    def _child(self, metric: _Labelled, *values: object) -> _Labelled:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*(str(v) for v in values))
            self._children[key] = child
        return child  # type: ignore[return-value]

    # Scraping.

    def render(self) -> str:
        """The metrics in the text format of CONTENT_TYPE."""
        return prometheus_client.generate_latest(self.registry).decode(
            "utf-8")

    def _route(self, service: str, path: str) -> str:
        for regex, label in self._routes.get(service, ()):
            if regex.match(path) is not None:
                return label
        return "other"

    def open_connections(self) -> dict[str, int]:
        """Open connections by service, 0 for a service with none."""
        with self._lock:
            services = set(self._open) | set(self._routes)
            return {s: self._open.get(s, 0) for s in sorted(services)}

    def ticket_states(self) -> dict[str, int]:
        """Installed tickets by state (TICKET_STATES)."""
        counts = dict.fromkeys(TICKET_STATES, 0)
        if self._tickets is not None:
            for ticket in self._tickets.tickets():
                if ticket.canceled:
                    counts["canceled"] += 1
                elif ticket.expired:
                    counts["expired"] += 1
                elif ticket.active:
                    counts["active"] += 1
                else:
                    counts["idle"] += 1
        return counts


class _Computed:
    """The gauges computed when scraped, as a prometheus_client
    collector."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Named without calling collect(): the registry checks names at
        # registration, before the daemon has tickets or services.
        return list(self._families({}, {}))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._metrics.open_connections(),
                                  self._metrics.ticket_states())
        pool = self._metrics._buffers
        if pool is not None:
            yield from _buffer_families(pool)

    def _families(self, open_connections: dict[str, int],
                  tickets: dict[str, int]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ovirt_imageio_open_connections",
            "Open connections, by service.", labels=("service",))
        for service, n in open_connections.items():
            family.add_metric((service,), n)
        yield family
        family = GaugeMetricFamily(
            "ovirt_imageio_tickets",
            "Installed tickets by state: active (an operation runs), "
            "idle, expired, canceled (waiting for its operations to end).",
            labels=("state",))
        for state, n in tickets.items():
            family.add_metric((state,), n)
        yield family
        family = GaugeMetricFamily(
            "ovirt_imageio_build_info",
            "Always 1; the version label is the daemon's version.",
            labels=("version",))
        family.add_metric((__version__,), 1)
        yield family


def _buffer_families(pool: BufferPool) -> Iterator[Metric]:
    """The buffer pool's state (transfer/buffers.py)."""
    st = pool.stats()
    family = GaugeMetricFamily(
        "ovirt_imageio_buffer_bytes",
        "Bytes of I/O buffers by state: lent (to requests), idle (kept "
        "for reuse), peak (the most ever held), limit "
        "([daemon] max_buffer_memory).", labels=("state",))
    for state, n in (("lent", st.lent), ("idle", st.idle),
                     ("peak", st.peak), ("limit", st.limit)):
        family.add_metric((state,), n)
    yield family
    yield GaugeMetricFamily(
        "ovirt_imageio_buffer_waiting",
        "Requests waiting for I/O buffers now.", value=st.waiting)
    yield CounterMetricFamily(
        "ovirt_imageio_buffer_waits",
        "Requests that had to wait for I/O buffers.", value=st.waits)
