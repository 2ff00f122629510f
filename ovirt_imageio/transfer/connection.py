# SPDX-License-Identifier: GPL-2.0-or-later
"""
The life cycle of a protocol door's connection, whatever protocol it
speaks: its id, its close hooks, the draining flag, the OPEN and CLOSE
log lines and the events its observer sees. A door subclasses
``Connection`` and supplies ``_serve`` (the protocol), ``drain`` (what
"after the current request" means for it) and ``_close_stats`` (the
statistics of the CLOSE line).

``serve()`` runs in the connection's thread: OPEN, ``_serve``, then
``_close``, which tells the observer, runs the close hooks (the backends
``transfer.context`` opened for the connection), logs CLOSE and closes
the stream. A client that disconnects or stalls ends its connection; it
counts as a ``connection`` error unless ``drain()`` or ``abort()`` ended
it on purpose.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Callable, ClassVar, Protocol

from .stream import Stream

# Connection ids shown in logs and keying a ticket's connections: one
# counter for every door, so ids are unique in the process
# (``transfer.context.Session``).
_ids = itertools.count(1)


class Observer(Protocol):
    """The connection events a door's metrics count."""

    def connection_opened(self, service: str) -> None: ...

    def connection_closed(self, service: str) -> None: ...

    def error(self, service: str, kind: str) -> None: ...


class Connection:
    """One client connection of a door (see the module doc)."""

    # The door's logger.
    _log: ClassVar[logging.Logger] = logging.getLogger("server")

    def __init__(self, stream: Stream, client: str, service: str,
                 observer: Observer | None) -> None:
        self.id = next(_ids)
        self.stream = stream
        self.client = client
        self.service = service
        self.started = time.monotonic()
        self._observer = observer
        self._closers: list[Callable[[], None]] = []
        # Guards _draining, and whatever a door makes exclusive with it.
        self._state_lock = threading.Lock()
        self._draining = False

    # What a door supplies.

    def _serve(self) -> None:
        """Serve the protocol until the connection should end."""
        raise NotImplementedError

    def drain(self) -> None:
        """End after the current request, or now if there is none."""
        raise NotImplementedError

    def _close_stats(self, seconds: float) -> str:
        """The statistics ending the CLOSE line."""
        raise NotImplementedError

    def _open_details(self) -> str:
        """What the OPEN line shows after the client."""
        return ""

    def _before_close(self) -> None:
        """Runs just before the stream closes."""

    # transfer.context.Session

    def on_close(self, func: Callable[[], None]) -> None:
        self._closers.append(func)

    # Any thread.

    def abort(self) -> None:
        """End the connection now, even in the middle of a request."""
        with self._state_lock:
            self._draining = True
        self.stream.shutdown()

    # The connection thread.

    def serve(self) -> None:
        self._log.info("OPEN connection=%s client=%s%s", self.id,
                       self.client, self._open_details())
        if self._observer is not None:
            self._observer.connection_opened(self.service)
        try:
            self._serve()
        except (ConnectionError, TimeoutError) as e:
            self._log.debug("Connection %s ended: %s", self.id, e)
            self._report("connection")
        except OSError as e:
            self._log.debug("Connection %s failed: %s", self.id, e)
            self._report("connection")
        finally:
            self._close()

    def _report(self, kind: str) -> None:
        # A connection shut down by drain() or abort() fails by design.
        if self._observer is not None and not self._draining:
            self._observer.error(self.service, kind)

    def _close(self) -> None:
        # Before the peer can see the close: a client that waited for it
        # must find the connection accounted for and logged. The closers
        # may already show it (a backend context's close hook is
        # abort(), which shuts the stream down).
        if self._observer is not None:
            self._observer.connection_closed(self.service)
        while self._closers:
            func = self._closers.pop()
            try:
                func()
            except Exception:
                self._log.exception("Error closing connection %s resource",
                                    self.id)
        self._before_close()
        self._log.info("CLOSE connection=%s client=%s %s", self.id,
                       self.client,
                       self._close_stats(time.monotonic() - self.started))
        self.stream.close()
