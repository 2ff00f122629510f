# SPDX-License-Identifier: GPL-2.0-or-later
"""
Per-connection backends.

The first request of a connection for a ticket opens the ticket's backend;
later requests on the same connection reuse it. Keeping the backend open
for the whole connection is also what makes flush meaningful: fsync
errors are only reported on the descriptor that wrote the data.

The context is registered in the ticket (so canceling the ticket closes
it) and in the connection (so closing the connection releases it).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from .. import backends
from ..backends.base import Backend
from ..config import Config, allowed_dirs
from . import allowed_paths
from .errors import AccessDenied
from .tickets import Ticket

log = logging.getLogger("context")


class Session(Protocol):
    """
    What the transfer core needs of a protocol door's connection: an id
    unique in the process, a hook run when it closes, and its inactivity
    timeout.
    """

    id: int

    def on_close(self, func: Callable[[], None]) -> None: ...

    def set_timeout(self, timeout: float) -> None: ...


class BackendContext:
    """
    A ticket's backend as used by one connection. ``on_close`` runs after
    the backend is closed, whoever closes it: a door whose connections
    outlive requests (NBD) passes a function ending the connection, so
    canceling the ticket ends it too.
    """

    def __init__(self, backend: Backend,
                 on_close: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self._on_close = on_close
        self._lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.backend.close()
        finally:
            if self._on_close is not None:
                self._on_close()


def buffer_size(cfg: Config, url: str) -> int:
    """The size of each of the two I/O buffers for a ticket's url."""
    name = backends.scheme(url)
    if name == "nbd":
        return cfg.backend_nbd.buffer_size
    if name == "http":
        return cfg.backend_http.buffer_size
    if name == "rbd":
        return cfg.backend_rbd.buffer_size
    return cfg.backend_file.buffer_size


def get(conn: Session, ticket: Ticket, cfg: Config,
        on_close: Callable[[], None] | None = None,
        concurrent: bool = False) -> BackendContext:
    """
    Return the connection's context for ticket, opening it if needed;
    ``on_close`` as in ``BackendContext``; ``concurrent`` opens the
    backend for use by several threads at once where it can be
    (``backends.Options.concurrent``).
    """
    ctx = ticket.get_context(conn.id)
    if isinstance(ctx, BackendContext) and not ctx.closed:
        return ctx

    if not allowed_paths.is_allowed(ticket.url, allowed_dirs(cfg.daemon)):
        # Valid at install time; a symbolic link changed since.
        raise AccessDenied(allowed_paths.RULE)
    mode: backends.Mode = "r+" if ticket.may("write") else "r"
    options = backends.Options(
        max_connections=cfg.daemon.max_connections,
        ca_file=cfg.backend_http.ca_file or cfg.tls.ca_file,
        buffer_size=buffer_size(cfg, ticket.url),
        rbd_connect_timeout=cfg.backend_rbd.connect_timeout,
        rbd_op_timeout=cfg.backend_rbd.op_timeout,
        concurrent=concurrent,
    )
    backend = backends.open_url(ticket.url, mode, sparse=ticket.sparse,
                                dirty=ticket.dirty, options=options)
    ctx = BackendContext(backend, on_close)
    # Raises AccessDenied (closing ctx) if the ticket was canceled meanwhile.
    ticket.add_context(conn.id, ctx)
    conn.on_close(lambda: ticket.remove_context(conn.id))
    conn.set_timeout(ticket.inactivity_timeout)
    log.debug("Opened %s backend for connection %s", backend.name, conn.id)
    return ctx
