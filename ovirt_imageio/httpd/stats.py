# SPDX-License-Identifier: GPL-2.0-or-later
"""
What each request did, and the per-connection statistics of the ``CLOSE``
log line.

A handler says what it did on its response (``Response.record``): the
*phase* (one of :data:`PHASES`) and the payload bytes it moved. When the
request ends, the connection turns that into a :class:`RequestRecord`,
adds it to its own :class:`ConnectionStats`, and hands it to its observer
(normally the daemon's ``metrics.Metrics``). A request that failed has no
phase, whatever its handler recorded before failing: the statistics and
the metrics count only what succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

# Phases of the CLOSE log line, in the order they are shown.
PHASES = ("options", "read", "write", "zero", "flush", "extents",
          "checksum")

# Phases whose bytes are storage I/O: the CLOSE line shows their volume
# and rate, and the metrics count their bytes.
BYTE_PHASES = frozenset({"read", "write", "zero", "checksum"})


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
    # Payload bytes moved by the phase: sent (read), received (write),
    # zeroed (zero) or read from storage (checksum).
    nbytes: int = 0
    # The backend the bytes went to ("file", "nbd", "http"), if any.
    backend: str | None = None


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
            if name in BYTE_PHASES:
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
