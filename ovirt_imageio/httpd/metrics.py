# SPDX-License-Identifier: GPL-2.0-or-later
"""
Measurements: what each request did, per-connection statistics for the
``CLOSE`` log line, and the daemon-wide metrics served on ``GET /metrics``
of the control service in the Prometheus text format (version 0.0.4).

Theory of operation
-------------------
A connection describes every finished request with a
:class:`RequestRecord` (service, method, path, status, duration, and the
*phase* and payload bytes derived by :func:`describe`). It adds the record
to its own :class:`ConnectionStats`, which it logs when it closes, and
hands it to an observer, normally the daemon's :class:`Metrics`.

:class:`Metrics` owns a small :class:`Registry` of labelled counters,
histograms and callback gauges. Counters and histograms are updated by
connection threads; each family has its own lock, held only for a dict
update, so scraping never blocks a transfer for long. Gauges whose truth
lives elsewhere (tickets by state) are computed when scraped instead of
being kept in sync.

Bytes are counted once a request succeeds, from what the connection saw:
a download counts the body bytes sent, an upload the body bytes received,
a zero request the ``size`` of its JSON message. A request that fails
counts no bytes, even if it moved some before failing.

The metric names are documented in ``docs/metrics.md``; changing one
breaks dashboards, so treat them as API.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .. import __version__, backends
from .errors import NotFound
from .message import Request, Response

if TYPE_CHECKING:
    from ..transfer.tickets import TicketStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Phases of the CLOSE log line, in the order they are shown.
PHASES = ("options", "read", "write", "zero", "flush", "extents",
          "checksum")

# Phases whose bytes are storage I/O, and the op label they count under.
_BYTE_OPS = {"read": "read", "write": "write", "zero": "zero"}

# Request durations range from sub-millisecond ticket polls to minutes
# long multi-gigabyte transfers (one request may carry a whole image).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
                    30.0, 60.0, 300.0)

# Ticket states reported by ovirt_imageio_tickets, always all of them so
# a state with no ticket shows 0 instead of vanishing.
TICKET_STATES = ("active", "idle", "expired", "canceled")


# Requests.


@dataclass(frozen=True)
class RequestRecord:
    """What one finished request did, as seen by its connection."""

    service: str
    method: str
    path: str
    status: int
    seconds: float
    # One of PHASES, or None for requests that are not image operations
    # (control API, failed requests).
    phase: str | None = None
    # Payload bytes moved by the phase: sent (read), received (write) or
    # zeroed (zero).
    nbytes: int = 0


def describe(method: str, path: str, status: int, received: int,
             sent: int, body: bytes | None = None
             ) -> tuple[str | None, int]:
    """
    Return the (phase, payload bytes) of a finished request.

    ``received`` and ``sent`` are body bytes; ``body`` is the JSON message
    of a PATCH if the connection kept it. Failed requests have no phase.

    Example::

        >>> describe("PUT", "/images/abc", 200, received=4096, sent=0)
        ('write', 4096)
        >>> describe("PATCH", "/images/abc", 200, 20, 0,
        ...          b'{"op": "zero", "size": 8192}')
        ('zero', 8192)
    """
    if status >= 400 or not path.startswith("/images/"):
        return None, 0
    rest = path[len("/images/"):]
    if rest.endswith("/extents"):
        return "extents", 0
    if "/checksum" in rest:
        return "checksum", 0
    if method == "GET":
        return "read", sent
    if method == "PUT":
        return "write", received
    if method == "OPTIONS":
        return "options", 0
    if method == "PATCH" and body is not None:
        try:
            msg = json.loads(body)
        except ValueError:
            return None, 0
        if not isinstance(msg, dict):
            return None, 0
        if msg.get("op") == "flush":
            return "flush", 0
        if msg.get("op") == "zero":
            size = msg.get("size")
            if isinstance(size, int) and not isinstance(size, bool):
                return "zero", size
            return "zero", 0
    return None, 0


class ConnectionStats:
    """
    Per-phase counters of one connection, for its CLOSE log line.

    Used by the connection's own thread only, so it has no lock.

    Example::

        >>> s = ConnectionStats()
        >>> s.add(RequestRecord("remote", "GET", "/images/x", 200, 0.5,
        ...                     "read", 1024**2))
        >>> s.format(1.0)
        '[connection 1 ops, 1.000000 s] [dispatch 1 ops, 0.500000 s] \
[read 1 ops, 0.500000 s, 1.00 MiB, 2.00 MiB/s]'
    """

    def __init__(self) -> None:
        self.requests = 0
        self.seconds = 0.0
        # phase -> [ops, seconds, bytes]
        self._phases: dict[str, list[float]] = {}

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        self.seconds += record.seconds
        if record.phase is not None:
            entry = self._phases.setdefault(record.phase, [0, 0.0, 0])
            entry[0] += 1
            entry[1] += record.seconds
            entry[2] += record.nbytes

    def phase(self, name: str) -> tuple[int, float, int]:
        """(ops, seconds, bytes) of a phase; zeros if it never ran."""
        ops, seconds, nbytes = self._phases.get(name, (0, 0.0, 0))
        return int(ops), float(seconds), int(nbytes)

    def format(self, connection_seconds: float) -> str:
        parts = [f"[connection 1 ops, {connection_seconds:.6f} s]",
                 f"[dispatch {self.requests} ops, {self.seconds:.6f} s]"]
        for name in PHASES:
            if name not in self._phases:
                continue
            ops, seconds, nbytes = self.phase(name)
            text = f"[{name} {ops} ops, {seconds:.6f} s"
            if name in _BYTE_OPS:
                rate = nbytes / seconds if seconds > 0 else 0.0
                text += f", {format_bytes(nbytes)}, {format_bytes(rate)}/s"
            parts.append(text + "]")
        return " ".join(parts)


def format_bytes(n: float) -> str:
    """
    Human readable binary size.

    >>> format_bytes(1536)
    '1.50 KiB'
    >>> format_bytes(100)
    '100 bytes'
    """
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.2f} {unit}"


# The registry.

Labels = tuple[str, ...]


class _Family:
    """A metric name with its help, type and labelled samples."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str]
                 ) -> None:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
            raise ValueError(f"Invalid metric name {name!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _check(self, labels: Labels) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, "
                             f"got {labels}")

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}",
                f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


_FamilyT = TypeVar("_FamilyT", bound=_Family)


class Counter(_Family):
    """A monotonically increasing value per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()
                 ) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters only go up")
        self._check(labels)
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def value(self, labels: Labels = ()) -> float:
        with self._lock:
            return self._values.get(labels, 0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [_sample(self.name, self.labelnames, labels, value)
                for labels, value in items]


class Histogram(_Family):
    """Observations counted in cumulative buckets, with sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        if "le" in labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("Buckets must be increasing")
        super().__init__(name, help, labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        # labels -> per bucket counts (not cumulative; the last one is
        # +Inf), sum.
        self._values: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        self._check(labels)
        # "le" is inclusive: a value equal to a bound falls in its bucket.
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            entry = self._values.get(labels)
            if entry is None:
                entry = ([0] * (len(self.buckets) + 1), [0.0])
                self._values[labels] = entry
            entry[0][index] += 1
            entry[1][0] += value

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((labels, (list(counts), total[0]))
                           for labels, (counts, total) in
                           self._values.items())
        names = (*self.labelnames, "le")
        lines = []
        for labels, (counts, total) in items:
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts,
                                    strict=True):
                cumulative += count
                lines.append(_sample(f"{self.name}_bucket", names,
                                     (*labels, _format_value(bound)),
                                     cumulative))
            lines.append(_sample(f"{self.name}_sum", self.labelnames,
                                 labels, total))
            lines.append(_sample(f"{self.name}_count", self.labelnames,
                                 labels, cumulative))
        return lines


class Gauge(_Family):
    """A value computed when scraped by a callback: labels -> value."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str],
                 func: Callable[[], Mapping[Labels, float]]) -> None:
        super().__init__(name, help, labelnames)
        self._func = func

    def samples(self) -> list[str]:
        values = self._func()
        for labels in values:
            self._check(labels)
        return [_sample(self.name, self.labelnames, labels, value)
                for labels, value in sorted(values.items())]


class Registry:
    """
    An ordered set of metric families rendered together.

    Example::

        >>> r = Registry()
        >>> c = r.add(Counter("demo_total", "Demo.", ["kind"]))
        >>> c.inc(("a",), 2)
        >>> print(r.render(), end="")
        # HELP demo_total Demo.
        # TYPE demo_total counter
        demo_total{kind="a"} 2
    """

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def add(self, family: _FamilyT) -> _FamilyT:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"Duplicate metric {family.name}")
            self._families[family.name] = family
        return family

    def render(self) -> str:
        with self._lock:
            families = list(self._families.values())
        lines: list[str] = []
        for family in families:
            lines.extend(family.header())
            lines.extend(family.samples())
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("\n", "\\n")
            .replace('"', '\\"'))


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _sample(name: str, labelnames: Sequence[str], labels: Labels,
            value: float) -> str:
    if labelnames:
        pairs = ",".join(f'{n}="{_escape_label(v)}"'
                         for n, v in zip(labelnames, labels, strict=True))
        return f"{name}{{{pairs}}} {_format_value(value)}"
    return f"{name} {_format_value(value)}"


# The daemon's metrics.


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
        r = self.registry = Registry()
        self.requests = r.add(Counter(
            "ovirt_imageio_requests_total",
            "HTTP requests served, by service, method, route and status.",
            ("service", "method", "route", "status")))
        self.duration = r.add(Histogram(
            "ovirt_imageio_request_duration_seconds",
            "Time from a request head to the end of its response.",
            ("service", "route"), DURATION_BUCKETS))
        self.bytes = r.add(Counter(
            "ovirt_imageio_backend_bytes_total",
            "Bytes read, written or zeroed by successful requests, by "
            "backend.", ("backend", "op")))
        self.accepted = r.add(Counter(
            "ovirt_imageio_connections_total",
            "Connections accepted, by service.", ("service",)))
        self.errors = r.add(Counter(
            "ovirt_imageio_errors_total",
            "Errors by service and kind: client (4xx), server (5xx), "
            "connection (I/O error ending a connection), tls (failed "
            "handshake), rejected (over the connection limit).",
            ("service", "kind")))
        r.add(Gauge("ovirt_imageio_open_connections",
                    "Open connections, by service.", ("service",),
                    self._open_connections))
        r.add(Gauge("ovirt_imageio_tickets",
                    "Installed tickets by state: active (an operation "
                    "runs), idle, expired, canceled (waiting for its "
                    "operations to end).", ("state",),
                    self._ticket_states))
        r.add(Gauge("ovirt_imageio_build_info",
                    "Always 1; the version label is the daemon's version.",
                    ("version",), lambda: {(__version__,): 1}))
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._routes: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        self._tickets: TicketStore | None = None

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
        self._routes[service] = routes

    def watch_tickets(self, tickets: TicketStore) -> None:
        self._tickets = tickets

    # Observer interface, called by connections.

    def connection_opened(self, service: str) -> None:
        self.accepted.inc((service,))
        with self._lock:
            self._open[service] = self._open.get(service, 0) + 1

    def connection_closed(self, service: str) -> None:
        with self._lock:
            self._open[service] = self._open.get(service, 0) - 1

    def error(self, service: str, kind: str) -> None:
        self.errors.inc((service, kind))

    def request_done(self, record: RequestRecord) -> None:
        route, ticket_id = self._route(record.service, record.path)
        self.requests.inc((record.service, record.method, route,
                           str(record.status)))
        self.duration.observe(record.seconds, (record.service, route))
        if record.status >= 500:
            self.error(record.service, "server")
        elif record.status >= 400:
            self.error(record.service, "client")
        op = _BYTE_OPS.get(record.phase or "")
        if op is not None and record.nbytes:
            self.bytes.inc((self._backend(ticket_id), op), record.nbytes)

    # Scraping.

    def render(self) -> str:
        return self.registry.render()

    def _route(self, service: str, path: str) -> tuple[str, str | None]:
        for regex, label in self._routes.get(service, ()):
            match = regex.match(path)
            if match is not None:
                groups = match.groups()
                return label, groups[0] if groups else None
        return "other", None

    def _backend(self, ticket_id: str | None) -> str:
        if ticket_id is None or self._tickets is None:
            return "unknown"
        try:
            ticket = self._tickets.get(ticket_id)
        except NotFound:
            # Deleted since the request ended.
            return "unknown"
        return backends.scheme(ticket.url)

    def _open_connections(self) -> dict[Labels, float]:
        with self._lock:
            services = set(self._open) | set(self._routes)
            return {(s,): self._open.get(s, 0) for s in services}

    def _ticket_states(self) -> dict[Labels, float]:
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
        return {(state,): n for state, n in counts.items()}


class MetricsHandler:
    """``GET /metrics`` on the control service."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def get(self, req: Request, resp: Response) -> None:
        resp.send(self._metrics.render().encode("utf-8"), CONTENT_TYPE)
